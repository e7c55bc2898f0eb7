"""Client-side compatibility: Python semantic-function frontend, OpenAI and LangChain helpers."""
