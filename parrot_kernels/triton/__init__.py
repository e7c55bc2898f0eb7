"""Triton GPU attention over paged KV: decode, shared-prefix decode, merge, prefill."""
