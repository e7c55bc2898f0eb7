"""The OpenAI request flow: prompts, dispatch to engines, generation, response assembly."""
