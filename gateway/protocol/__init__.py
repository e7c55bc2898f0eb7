"""Wire types of the gateway's public HTTP API (OpenAI-compatible requests and responses)."""
