"""Text <-> token ids and chat rendering, built from GGUF metadata or a tokenizer.json directory."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import tokenizers
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, decoders, models, pre_tokenizers

from engine.builtin.errors import ChatTemplateError, ModelLoadError

# llama.cpp's token_type values (gguf.TokenType).
_CONTROL = 3
_USER_DEFINED = 4

# Chat models end a turn with this rather than the vocabulary's end-of-text token.
_END_OF_TURN = "<|im_end|>"


def _byte_level(digits: bool) -> pre_tokenizers.PreTokenizer:
    """GPT-2's byte-level split, optionally after isolating every digit."""
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if not digits:
        return byte_level
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])


# `tokenizer.ggml.pre` -> the pre-tokenizer of the model's original tokenizer.json. SmolLM and
# StarCoder vocabularies were trained on text split into single digits, so text must be split the
# same way: without it a whitespace run before a digit ("a  1") merges differently.
_PRE_TOKENIZERS = {
    "gpt-2": lambda: _byte_level(digits=False),
    "smollm": lambda: _byte_level(digits=True),
    "starcoder": lambda: _byte_level(digits=True),
}


class Tokenizer:
    """A Hugging Face `tokenizers` backend plus the special ids and chat template of one model."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        bos_token_id: int | None,
        eos_token_ids: Sequence[int],
        chat_template: str | None,
        add_bos_token: bool = False,
    ) -> None:
        self.backend = backend
        self._bos_token_id = bos_token_id
        self._eos_token_ids = tuple(dict.fromkeys(eos_token_ids))
        self._add_bos = add_bos_token and bos_token_id is not None
        self.chat_template = chat_template
        self._template = _compile_template(chat_template) if chat_template else None

    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, Any]) -> Tokenizer:
        """Build from llama.cpp's `tokenizer.*` keys (a byte-level BPE "gpt2" vocabulary)."""
        kind = metadata.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ModelLoadError(f"unsupported GGUF tokenizer model {kind!r}; only 'gpt2' is")
        pre = metadata.get("tokenizer.ggml.pre", "gpt-2")
        if pre not in _PRE_TOKENIZERS:
            raise ModelLoadError(
                f"unsupported GGUF pre-tokenizer {pre!r}; supported: {sorted(_PRE_TOKENIZERS)}"
            )
        tokens: list[str] = list(metadata["tokenizer.ggml.tokens"])
        merges = [tuple(merge.split(" ", 1)) for merge in metadata["tokenizer.ggml.merges"]]
        vocab = {token: index for index, token in enumerate(tokens)}
        backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
        backend.pre_tokenizer = _PRE_TOKENIZERS[pre]()
        backend.decoder = decoders.ByteLevel()
        # Control tokens (<|im_start|> ...) must match whole, even inside text, because chat
        # templates render them as text; user-defined ones match whole but are not special.
        types = metadata.get("tokenizer.ggml.token_type") or ()
        backend.add_special_tokens(
            [_added(tokens[i], special=True) for i, t in enumerate(types) if t == _CONTROL]
        )
        backend.add_tokens(
            [_added(tokens[i], special=False) for i, t in enumerate(types) if t == _USER_DEFINED]
        )
        bos = metadata.get("tokenizer.ggml.bos_token_id")
        eos = metadata.get("tokenizer.ggml.eos_token_id")
        return cls(
            backend,
            bos_token_id=None if bos is None else int(bos),
            eos_token_ids=_eos_ids(backend, [] if eos is None else [int(eos)]),
            chat_template=metadata.get("tokenizer.chat_template"),
            add_bos_token=bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
        )

    @classmethod
    def from_hf_dir(cls, path: str | Path) -> Tokenizer:
        """Build from a Hugging Face directory: tokenizer.json plus tokenizer_config.json."""
        path = Path(path)
        if not (path / "tokenizer.json").is_file():
            raise ModelLoadError(f"{path} has no tokenizer.json")
        backend = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
        config_file = path / "tokenizer_config.json"
        config = json.loads(config_file.read_text("utf-8")) if config_file.is_file() else {}
        bos = _special_id(backend, config.get("bos_token"))
        eos = _special_id(backend, config.get("eos_token"))
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
            named = {item["name"]: item["template"] for item in template}
            template = named.get("default")
        return cls(
            backend,
            bos_token_id=bos,
            eos_token_ids=_eos_ids(backend, [] if eos is None else [eos]),
            chat_template=template,
            add_bos_token=bool(config.get("add_bos_token", False)),
        )

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def bos_token_id(self) -> int | None:
        return self._bos_token_id

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self._eos_token_ids

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; special tokens written in the text become their single ids."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self._add_bos:
            ids.insert(0, self._bos_token_id)
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def render_chat(self, messages: Sequence[Any], add_generation_prompt: bool = True) -> str:
        """The prompt text for `messages` (dicts or objects with .role and .content)."""
        if self._template is None:
            raise ChatTemplateError("this model has no chat template", param="messages")
        bos = self._bos_token_id
        eos = self._eos_token_ids[0] if self._eos_token_ids else None
        try:
            return self._template.render(
                messages=[_message_dict(message) for message in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token="" if bos is None else self.backend.id_to_token(bos),
                eos_token="" if eos is None else self.backend.id_to_token(eos),
            )
        except jinja2.TemplateError as error:
            raise ChatTemplateError(f"chat template failed: {error}", param="messages") from error


class IncrementalDetokenizer:
    """Turns generated ids into text deltas, decoding only a small trailing window per token.

    Ids before `prefix` are settled text. `prefix:read` was emitted last time and is decoded
    again as context; `read:` is not emitted yet. Output ending in U+FFFD is held back because
    it may be a UTF-8 character whose remaining bytes come with the next token:

        ids:  | settled ... | last emitted | held back |
                            ^prefix        ^read
    """

    # A UTF-8 character has at most 4 bytes and every token at least 1, so once more tokens
    # than this are held back, all but the last 3 are bytes no future token can complete.
    _MAX_HELD = 4

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._ids: list[int] = []
        self._chunks: list[str] = []
        self._prefix = 0
        self._read = 0

    @property
    def text(self) -> str:
        return "".join(self._chunks)

    def add(self, token_id: int) -> str:
        """Append one generated id; return the text it completes (often "", never partial)."""
        self._ids.append(token_id)
        end = len(self._ids)
        new_text = self._decode(self._prefix, end)
        if not new_text.endswith("\ufffd"):
            return self._emit(new_text, end)
        if end - self._read > self._MAX_HELD:
            # Invalid bytes stay invalid: release what the last 3 tokens cannot change.
            cut = end - 3
            settled = self._decode(self._prefix, cut)
            if new_text.startswith(settled):
                return self._emit(settled, cut)
        return ""

    def flush(self) -> str:
        """Emit whatever is held back (call once generation has ended)."""
        return self._emit(self._decode(self._prefix, len(self._ids)), len(self._ids))

    def _decode(self, start: int, end: int) -> str:
        return self._tokenizer.decode(self._ids[start:end], skip_special_tokens=self._skip_special)

    def _emit(self, window_text: str, new_read: int) -> str:
        delta = window_text[len(self._decode(self._prefix, self._read)) :]
        self._prefix, self._read = self._read, new_read
        if delta:
            self._chunks.append(delta)
        return delta


def _added(content: str, special: bool) -> AddedToken:
    return AddedToken(content, special=special, normalized=False)


def _special_id(backend: tokenizers.Tokenizer, token: str | dict | None) -> int | None:
    """tokenizer_config.json spells a special token as a string or {"content": ...}."""
    if isinstance(token, dict):
        token = token.get("content")
    return None if token is None else backend.token_to_id(token)


def _eos_ids(backend: tokenizers.Tokenizer, eos: list[int]) -> list[int]:
    end_of_turn = backend.token_to_id(_END_OF_TURN)
    return eos + ([] if end_of_turn is None else [end_of_turn])


def _message_dict(message: Any) -> dict[str, Any]:
    if isinstance(message, Mapping):
        role, content = message["role"], message.get("content")
    else:
        role, content = message.role, message.content
    # Assistant turns that only carry tool calls have no content; templates concatenate it.
    return {"role": role, "content": "" if content is None else content}


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _compile_template(source: str) -> jinja2.Template:
    """Compile like transformers does, so prompts match the ones the model was trained on."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = lambda value, indent=None: json.dumps(
        value, ensure_ascii=False, indent=indent
    )
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as error:
        raise ModelLoadError(f"invalid chat template: {error}") from error
