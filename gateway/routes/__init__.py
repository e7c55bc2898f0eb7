"""HTTP routes: thin controllers over `gateway.serving` (OpenAI, ops, admin)."""
