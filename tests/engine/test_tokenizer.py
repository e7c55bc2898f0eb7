"""Tokenizer and incremental detokenizer, checked against transformers on the embedded GGUF."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import pytest
from tokenizers import pre_tokenizers

from engine.builtin.errors import ChatTemplateError
from engine.builtin.model_files import embedded_model_path
from engine.builtin.tokenizer import IncrementalDetokenizer, Tokenizer

CORPUS = [
    "",
    "Hello, world!",
    "Hello 12345 world and 3.14159 and 1,000,000",
    "a  1",
    "x\n\n2",
    "  3 leading spaces before a digit",
    "tab\t\t4",
    "    8 spaces",
    "a\r\n 12",
    "superscripts x²³ and fractions ½ and Arabic-Indic ٣٤",
    "Café naïve résumé façade Ångström",
    "你好，世界！这是一个测试。 日本語のテキスト 한국어",
    "Россия и Україна; مرحبا بالعالم",
    "Emoji: 😀👍🏽🇺🇸 and ❤️ and 👨‍👩‍👧",
    "def foo(x):\n    return x ** 2  # square\n\n\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "I'm sure they'll say it's fine, don't you think? We've seen it.",
    "   leading and trailing   ",
    "\u00a0non-breaking\u200bzero-width\u3000ideographic space",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text<|im_end|>glued<|endoftext|><repo_name>x<file_sep>",
    "<|im_start|> <|im_end|>  <|im_start|>",
    "Punctuation!!! ??? ... --- (parens) [brackets] {braces}",
    "https://example.com/path?q=1&r=2#frag",
    "\n",
    " ",
    "😀",
]

CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
    ],
    [
        {"role": "user", "content": "Translate 'chat' to French."},
        {"role": "assistant", "content": "« chat » 🐱"},
        {"role": "user", "content": "And to German?\n\nThanks!"},
    ],
]


@pytest.fixture(scope="module")
def reference():
    """transformers' tokenizer from the same GGUF, split the way the model's tokenizer.json does.

    transformers builds GGUF "gpt2" vocabularies with GPT-2's plain ByteLevel pre-tokenizer, but
    SmolLM2's own tokenizer.json (and llama.cpp's "smollm" pre-tokenizer) first isolate every
    digit. Only the split is replaced; vocabulary, merges, specials and decoder stay theirs.
    """
    transformers = pytest.importorskip("transformers")
    path = embedded_model_path()
    ref = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    ref.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    return ref


@pytest.mark.parametrize("text", CORPUS)
def test_encode_matches_transformers(tokenizer: Tokenizer, reference, text: str) -> None:
    ids = tokenizer.encode(text)
    assert ids == reference.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == reference.decode(ids) == text


def test_whitespace_before_digit_splits_like_smollm(tokenizer: Tokenizer) -> None:
    # With digits isolated first, "a  " is pre-tokenized alone and its two spaces merge.
    expected = [tokenizer.token_to_id(t) for t in ("a", "ĠĠ", "1")]
    assert tokenizer.encode("a  1") == expected


def test_special_tokens_are_single_ids(tokenizer: Tokenizer) -> None:
    assert tokenizer.encode("<|im_start|>") == [tokenizer.token_to_id("<|im_start|>")]
    ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nhi"


def test_special_ids(tokenizer: Tokenizer) -> None:
    assert tokenizer.vocab_size == 49152
    assert tokenizer.bos_token_id == 1
    assert tokenizer.eos_token_ids == (tokenizer.token_to_id("<|im_end|>"),)
    # add_bos_token is false in this GGUF, so add_special_tokens changes nothing.
    assert tokenizer.encode("hi", add_special_tokens=True) == tokenizer.encode("hi")


def test_decode_random_ids_matches_transformers(tokenizer: Tokenizer, reference) -> None:
    rng = random.Random(1234)
    for _ in range(200):
        ids = [rng.randrange(tokenizer.vocab_size) for _ in range(rng.randrange(1, 30))]
        ids += rng.sample(range(17), 2)  # sprinkle in special tokens
        rng.shuffle(ids)
        for skip in (False, True):
            assert tokenizer.decode(ids, skip) == reference.decode(ids, skip_special_tokens=skip)


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_render_chat_matches_transformers(
    tokenizer: Tokenizer, reference, messages: list[dict], add_generation_prompt: bool
) -> None:
    expected = reference.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert tokenizer.render_chat(messages, add_generation_prompt) == expected


def test_render_chat_accepts_message_objects(tokenizer: Tokenizer) -> None:
    @dataclass
    class Message:
        role: str
        content: str | None

    objects = [Message("system", "Be brief."), Message("user", "hi"), Message("assistant", None)]
    dicts = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    dicts.append({"role": "assistant", "content": ""})
    assert tokenizer.render_chat(objects, False) == tokenizer.render_chat(dicts, False)


def test_template_exceptions_become_chat_template_errors(tokenizer: Tokenizer) -> None:
    strict = Tokenizer(
        tokenizer.backend,
        bos_token_id=1,
        eos_token_ids=(2,),
        chat_template=(
            "{% if messages[0]['role'] == 'assistant' %}"
            "{{ raise_exception('Conversation must start with a user message') }}{% endif %}"
            "{% for m in messages %}{{ bos_token + m['content'] + eos_token }}{% endfor %}"
        ),
    )
    assert strict.render_chat([{"role": "user", "content": "x"}]) == "<|im_start|>x<|im_end|>"
    with pytest.raises(ChatTemplateError, match="must start with a user"):
        strict.render_chat([{"role": "assistant", "content": "x"}])


def test_sandbox_blocks_unsafe_attribute_access(tokenizer: Tokenizer) -> None:
    evil = Tokenizer(
        tokenizer.backend,
        bos_token_id=1,
        eos_token_ids=(2,),
        chat_template="{{ messages.__class__.__mro__[1].__subclasses__() }}",
    )
    with pytest.raises(ChatTemplateError):
        evil.render_chat([{"role": "user", "content": "x"}])


def _stream(detok: IncrementalDetokenizer, ids: list[int]) -> list[str]:
    return [detok.add(token_id) for token_id in ids]


@pytest.mark.parametrize("text", [t for t in CORPUS if t])
def test_detokenizer_streams_valid_text_exactly(tokenizer: Tokenizer, text: str) -> None:
    detok = IncrementalDetokenizer(tokenizer)
    deltas = _stream(detok, tokenizer.encode(text))
    # Valid text never shows a half-decoded character, and nothing is left held back.
    assert all("\ufffd" not in delta for delta in deltas)
    assert "".join(deltas) == detok.text == text
    assert detok.flush() == ""


def test_detokenizer_random_ids_equal_full_decode(tokenizer: Tokenizer) -> None:
    rng = random.Random(7)
    # Byte tokens and pieces of multi-byte characters, so UTF-8 sequences get split and broken.
    fragments = [i for i in range(tokenizer.vocab_size) if "\ufffd" in tokenizer.decode([i])]
    assert len(fragments) > 100
    for trial in range(300):
        pool = fragments if trial % 2 else range(tokenizer.vocab_size)
        ids = [rng.choice(pool) for _ in range(rng.randrange(1, 60))]
        skip = trial % 3 == 0
        detok = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip)
        text = "".join(_stream(detok, ids)) + detok.flush()
        assert text == detok.text == tokenizer.decode(ids, skip_special_tokens=skip)


def test_detokenizer_decodes_a_bounded_window(tokenizer: Tokenizer) -> None:
    """Per token, only a few trailing ids are decoded, even for long invalid byte runs."""
    widths: list[int] = []

    class Counting(Tokenizer):
        def decode(self, ids, skip_special_tokens=False):
            ids = list(ids)
            widths.append(len(ids))
            return super().decode(ids, skip_special_tokens)

    counting = Counting(tokenizer.backend, bos_token_id=1, eos_token_ids=(2,), chat_template=None)
    continuation_byte = tokenizer.token_to_id("\u0122")  # GPT-2's spelling of byte 0x80
    rng = random.Random(3)
    ids = tokenizer.encode("Grüße 😀 " * 100)
    ids += [continuation_byte] * 200 + [rng.randrange(17, 49152) for _ in range(300)]
    detok = IncrementalDetokenizer(counting)
    text = "".join(_stream(detok, ids)) + detok.flush()
    assert text == tokenizer.decode(ids)
    assert max(widths) <= 12


def test_from_hf_dir(tokenizer: Tokenizer, tmp_path) -> None:
    tokenizer.backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(
        '{"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"},'
        ' "chat_template": ' + json.dumps(tokenizer.chat_template) + "}"
    )
    loaded = Tokenizer.from_hf_dir(tmp_path)
    assert loaded.bos_token_id == 1 and loaded.eos_token_ids == (2,)
    for text in CORPUS:
        assert loaded.encode(text) == tokenizer.encode(text)
    for messages in CONVERSATIONS:
        assert loaded.render_chat(messages) == tokenizer.render_chat(messages)
