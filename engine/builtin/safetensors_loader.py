"""Load a Hugging Face Llama directory (config.json, *.safetensors, tokenizer.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from engine.builtin.config import ModelConfig
from engine.builtin.errors import ModelLoadError
from engine.builtin.model_files import LoadedModel
from engine.builtin.tokenizer import Tokenizer

_SUPPORTED_MODEL_TYPES = ("llama",)


def load_hf_dir(path: str | Path) -> LoadedModel:
    """Read config, float32 weights and tokenizer from a Hugging Face model directory."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{path} has no config.json")
    tokenizer = Tokenizer.from_hf_dir(path)
    config = config_from_hf(json.loads(config_file.read_text("utf-8")), tokenizer, path.name)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{path} has no *.safetensors files")
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            weights.update(load_file(file))
        except (OSError, SafetensorError) as error:
            raise ModelLoadError(f"cannot read {file}: {error}") from error
    # Some exports keep a copy of the tied head, or old rotary caches; neither is a parameter.
    if config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
    weights = {
        name: tensor.float().contiguous()
        for name, tensor in weights.items()
        if not name.endswith("rotary_emb.inv_freq")
    }
    return LoadedModel(config=config, weights=weights, tokenizer=tokenizer)


def config_from_hf(raw: dict[str, Any], tokenizer: Tokenizer, default_name: str) -> ModelConfig:
    """Our config from a transformers LlamaConfig dict; rejects features the engine lacks."""
    model_type = raw.get("model_type")
    if model_type not in _SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(
            f"unsupported model type {model_type!r}; supported: {list(_SUPPORTED_MODEL_TYPES)}"
        )
    rope = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", None):
        raise ModelLoadError(f"unsupported rope scaling type {rope_type!r}; only unscaled RoPE is")
    for flag in ("attention_bias", "mlp_bias"):
        if raw.get(flag):
            raise ModelLoadError(f"unsupported model feature {flag}=true")
    if raw.get("hidden_act", "silu") != "silu":
        raise ModelLoadError(f"unsupported activation {raw['hidden_act']!r}; only silu is")

    eos = raw.get("eos_token_id")
    eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    bos = raw.get("bos_token_id", tokenizer.bos_token_id)
    try:
        hidden, num_heads = int(raw["hidden_size"]), int(raw["num_attention_heads"])
        return ModelConfig(
            name=str(raw.get("_name_or_path") or default_name),
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(raw["intermediate_size"]),
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(raw.get("num_key_value_heads") or num_heads),
            head_dim=int(raw.get("head_dim") or hidden // num_heads),
            rope_theta=float(raw.get("rope_theta", rope.get("rope_theta", 10000.0))),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            context_length=int(raw["max_position_embeddings"]),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            bos_token_id=None if bos is None else int(bos),
            eos_token_ids=tuple(dict.fromkeys([*eos_ids, *tokenizer.eos_token_ids])),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ModelLoadError(f"invalid config.json: {error!r}") from error
