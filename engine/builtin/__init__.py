"""Builtin PyTorch engine: Llama-family model, paged KV cache, context tree, continuous batching."""
