"""Engines behind Parrot's context-oriented protocol (builtin PyTorch, remote HTTP, echo)."""
