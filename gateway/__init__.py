"""Parrot gateway: OpenAI and semantic-variable APIs, state store, engine pool, scheduling."""
