"""Tokenizers for the upstream backend: the upstream's own `/tokenize`, or one held locally.

The gateway works in token ids (prompt caching, prefix routing, context replay), so an
upstream engine needs a tokenizer that matches the upstream's model exactly:

- `UpstreamTokenizer`: vLLM's and SGLang's `/tokenize` and `/detokenize` routes (chat
  prompts are rendered by tokenizing `messages` and decoding the ids back to text);
- `LocalTokenizer`: a `engine.builtin.tokenizer.Tokenizer` loaded from the same model's
  GGUF or Hugging Face directory (`load_local_tokenizer`);
- `HFTokenizer`: a transformers tokenizer object (an in-process SGLang runtime's);
- `EngineTokenizer`: borrow another engine's tokenizer (e.g. an echo engine in tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import httpx

from engine.client import EngineClient
from engine.errors import EngineUnavailable
from engine.openai.errors import upstream_error
from engine.openai.wire import DETOKENIZE, ENCODER, TOKENIZE
from engine.protocol import ChatMessage


class TextTokenizer(Protocol):
    @property
    def vocab_size(self) -> int | None: ...

    async def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...

    async def decode(self, token_ids: Sequence[int]) -> str: ...

    async def render_chat(
        self, messages: Sequence[ChatMessage], add_generation_prompt: bool = True
    ) -> str: ...


class UpstreamTokenizer:
    """`/tokenize` + `/detokenize` on the upstream's root URL (vLLM, SGLang)."""

    def __init__(self, client: httpx.AsyncClient, root_url: str, model: str) -> None:
        self._client = client
        self._root = root_url
        self._model = model

    @property
    def vocab_size(self) -> int | None:
        return None  # neither server reports it

    async def _post(self, path: str, body: dict[str, Any]) -> bytes:
        url = f"{self._root}{path}"
        try:
            response = await self._client.post(url, content=ENCODER.encode(body))
        except httpx.TransportError as exc:
            raise EngineUnavailable(f"upstream {url} unreachable: {exc}") from exc
        if response.status_code >= 400:
            raise upstream_error(url, response.status_code, response.content)
        return response.content

    async def probe(self) -> bool:
        """Whether the upstream serves `/tokenize` at all."""
        try:
            await self.encode("probe")
        except Exception:
            return False
        return True

    async def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        body = {"model": self._model, "prompt": text, "add_special_tokens": add_special_tokens}
        return TOKENIZE.decode(await self._post("/tokenize", body)).tokens

    async def decode(self, token_ids: Sequence[int]) -> str:
        # SGLang skips special tokens unless told not to; vLLM keeps them either way.
        body = {"model": self._model, "tokens": list(token_ids), "skip_special_tokens": False}
        result = DETOKENIZE.decode(await self._post("/detokenize", body))
        return result.prompt if result.prompt is not None else (result.text or "")

    async def render_chat(
        self, messages: Sequence[ChatMessage], add_generation_prompt: bool = True
    ) -> str:
        body = {
            "model": self._model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "add_generation_prompt": add_generation_prompt,
        }
        ids = TOKENIZE.decode(await self._post("/tokenize", body)).tokens
        return await self.decode(ids)


class LocalTokenizer:
    """A tokenizer object with `encode`/`decode`/`render_chat` (the builtin engine's class)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    @property
    def vocab_size(self) -> int | None:
        return self._tokenizer.vocab_size

    async def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens)

    async def decode(self, token_ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(token_ids))

    async def render_chat(
        self, messages: Sequence[ChatMessage], add_generation_prompt: bool = True
    ) -> str:
        return self._tokenizer.render_chat(messages, add_generation_prompt)


class HFTokenizer:
    """A transformers tokenizer object (an in-process SGLang runtime's own)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    @property
    def vocab_size(self) -> int | None:
        return len(self._tokenizer)  # with added tokens, unlike its `vocab_size`

    async def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens))

    async def decode(self, token_ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(token_ids), skip_special_tokens=False)

    async def render_chat(
        self, messages: Sequence[ChatMessage], add_generation_prompt: bool = True
    ) -> str:
        return self._tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages],
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )


class EngineTokenizer:
    """The tokenizer of another (started) engine."""

    def __init__(self, engine: EngineClient) -> None:
        self._engine = engine

    @property
    def vocab_size(self) -> int | None:
        return self._engine.info.vocab_size

    async def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return await self._engine.tokenize(text, add_special_tokens)

    async def decode(self, token_ids: Sequence[int]) -> str:
        return await self._engine.detokenize(token_ids)

    async def render_chat(
        self, messages: Sequence[ChatMessage], add_generation_prompt: bool = True
    ) -> str:
        return await self._engine.render_chat(messages, add_generation_prompt)


def load_local_tokenizer(path: str | None) -> LocalTokenizer:
    """The tokenizer of a .gguf file or Hugging Face directory (None: the embedded SmolLM2)."""
    # Imported here: the GGUF reader pulls in torch, which a pure upstream proxy never needs.
    from engine.builtin.gguf_loader import load_gguf_tokenizer
    from engine.builtin.model_files import embedded_model_path
    from engine.builtin.tokenizer import Tokenizer

    source = embedded_model_path() if path is None else Path(path)
    if source.is_dir():
        return LocalTokenizer(Tokenizer.from_hf_dir(source))
    return LocalTokenizer(load_gguf_tokenizer(source))
