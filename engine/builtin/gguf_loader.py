"""Load a llama.cpp GGUF file into float32 tensors with Hugging Face Llama names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize

from engine.builtin.config import ModelConfig
from engine.builtin.errors import ModelLoadError
from engine.builtin.model_files import LoadedModel
from engine.builtin.tokenizer import Tokenizer

_SUPPORTED_ARCHITECTURES = ("llama",)

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}

_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.weight")


class _Reader(GGUFReader):
    """GGUFReader that slices a plain ndarray view of its memmap.

    The stock reader slices the `np.memmap` itself once per metadata value, and every memmap
    slice pays for `__array_finalize__`; with ~100k vocabulary strings that made parsing 3-4x
    slower (about 5 s instead of 1.5 s for SmolLM2). The bytes and results are the same.
    """

    def _get(
        self, offset: int, dtype: Any, count: int = 1, override_order: Any = None
    ) -> np.ndarray:
        plain = self.data.view(np.ndarray)
        count = int(count)
        end = offset + np.dtype(dtype).itemsize * count
        values = plain[offset:end].view(dtype=dtype)[:count]
        order = self.byte_order if override_order is None else override_order
        return values.view(values.dtype.newbyteorder(order))


def load_gguf(path: str | Path) -> LoadedModel:
    """Read config, dequantized weights and tokenizer from one GGUF file."""
    path = Path(path)
    try:
        reader = _Reader(path)
    # A truncated or corrupt file fails wherever parsing runs past the data.
    except (OSError, ValueError, IndexError, KeyError) as error:
        raise ModelLoadError(f"cannot read GGUF file {path}: {error}") from error
    metadata = read_metadata(reader)
    tokenizer = Tokenizer.from_gguf_metadata(metadata)
    tensor_names = {tensor.name for tensor in reader.tensors}
    # The served model id is the file's name without its quantisation suffix
    # ("SmolLM2-135M-Instruct.Q4_1.gguf" -> "SmolLM2-135M-Instruct"): stable and readable,
    # unlike general.name, which is free text.
    config = config_from_metadata(
        metadata, tokenizer, tensor_names, default_name=path.name.split(".")[0]
    )
    weights = {}
    for tensor in reader.tensors:
        name = hf_name(tensor.name)
        values = _to_float32(tensor)
        if name.endswith("q_proj.weight"):
            values = unpermute_rope_rows(values, config.num_heads)
        elif name.endswith("k_proj.weight"):
            values = unpermute_rope_rows(values, config.num_kv_heads)
        weights[name] = values
    return LoadedModel(config=config, weights=weights, tokenizer=tokenizer)


def load_gguf_tokenizer(path: str | Path) -> Tokenizer:
    """Only the tokenizer of a GGUF file (no weights are dequantised)."""
    return Tokenizer.from_gguf_metadata(read_metadata(_Reader(Path(path))))


def read_metadata(reader: GGUFReader) -> dict[str, Any]:
    """All key/value fields as Python values (strings, numbers, lists)."""
    return {name: field.contents() for name, field in reader.fields.items()}


def config_from_metadata(
    metadata: dict[str, Any], tokenizer: Tokenizer, tensor_names: set[str], default_name: str
) -> ModelConfig:
    arch = metadata.get("general.architecture")
    if arch not in _SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(
            f"unsupported model architecture {arch!r}; supported: {list(_SUPPORTED_ARCHITECTURES)}"
        )
    scaling = metadata.get(f"{arch}.rope.scaling.type", "none")
    # Llama 3.1 style scaling ships its frequency factors as a tensor instead of a key.
    if scaling != "none" or "rope_freqs.weight" in tensor_names:
        kind = scaling if scaling != "none" else "llama3 (rope_freqs)"
        raise ModelLoadError(f"unsupported rope scaling type {kind!r}; only unscaled RoPE is")

    def key(suffix: str, default: Any = None) -> Any:
        value = metadata.get(f"{arch}.{suffix}", default)
        if value is None:
            raise ModelLoadError(f"GGUF metadata lacks {arch}.{suffix}")
        return value

    hidden = int(key("embedding_length"))
    num_heads = int(key("attention.head_count"))
    head_dim = int(key("attention.key_length", metadata.get(f"{arch}.rope.dimension_count", 0)))
    try:
        return ModelConfig(
            name=default_name,
            vocab_size=int(key("vocab_size", len(metadata["tokenizer.ggml.tokens"]))),
            hidden_size=hidden,
            intermediate_size=int(key("feed_forward_length")),
            num_layers=int(key("block_count")),
            num_heads=num_heads,
            num_kv_heads=int(key("attention.head_count_kv", num_heads)),
            head_dim=head_dim or hidden // num_heads,
            rope_theta=float(key("rope.freq_base", 10000.0)),
            rms_norm_eps=float(key("attention.layer_norm_rms_epsilon")),
            context_length=int(key("context_length")),
            tie_word_embeddings="output.weight" not in tensor_names,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_ids=tokenizer.eos_token_ids,
        )
    except ValueError as error:
        raise ModelLoadError(f"invalid model config in GGUF metadata: {error}") from error


def hf_name(gguf_name: str) -> str:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _LAYER_TENSOR.fullmatch(gguf_name)
    if match is None or match.group(2) not in _LAYER_NAMES:
        raise ModelLoadError(f"unexpected tensor {gguf_name!r} in a llama GGUF file")
    return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}.weight"


def unpermute_rope_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo the row order llama.cpp's converter gives q/k weights for GGML's RoPE.

    GGML rotates adjacent pairs (x0, x1), (x2, x3) ...; Hugging Face rotates halves
    (x0, x_{d/2}), (x1, x_{d/2+1}) .... The converter interleaves each head's rows so GGML's
    pairs are HF's; within a head of size d, GGUF row 2j+s holds HF row s*d/2 + j:

        GGUF rows: a0 b0 a1 b1 a2 b2 ...   ->   HF rows: a0 a1 a2 ... b0 b1 b2 ...
    """
    rows, cols = weight.shape
    half = rows // num_heads // 2
    return weight.reshape(num_heads, half, 2, cols).transpose(1, 2).reshape(rows, cols).contiguous()


def _to_float32(tensor: Any) -> torch.Tensor:
    values = dequantize(tensor.data, tensor.tensor_type)
    # GGUF lists dimensions innermost first; torch wants (out_features, in_features).
    shape = tuple(int(n) for n in reversed(tensor.shape))
    values = np.asarray(values, dtype=np.float32).reshape(shape)
    if not values.flags.writeable:  # unquantized tensors come back as views of the mmap
        values = values.copy()
    return torch.from_numpy(values)
