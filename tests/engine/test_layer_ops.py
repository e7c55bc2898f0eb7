"""The model's layer ops: the C kernels (NativeLayerOps) against torch ops (TorchLayerOps),
one op at a time and through whole forward passes."""

from __future__ import annotations

import pytest
import torch

from engine.builtin.attention import AttentionPlan
from engine.builtin.config import tiny_config
from engine.builtin.kv_cache import KVCache
from engine.builtin.layer_ops import NativeLayerOps, TorchLayerOps
from engine.builtin.model import LlamaModel
from parrot_kernels import native

LIB = native.load()
pytestmark = pytest.mark.skipif(LIB is None, reason="no C kernels on this machine")
CPU = torch.device("cpu")


def _prefill_logits(model: LlamaModel, ids: torch.Tensor) -> torch.Tensor:
    """Every position's logits for one sequence prefilled from scratch."""
    cfg, t = model.config, ids.shape[0]
    blocks = -(-t // 16)
    kv = KVCache(cfg, blocks, 16, model.dtype)
    plan = AttentionPlan.build(
        kv, cfg.head_dim**-0.5, cfg.num_heads, [], [(list(range(blocks)), 0, t)]
    )
    return model.forward(ids, torch.arange(t), plan, torch.arange(t))


def test_each_op_agrees_with_torch_to_bf16_rounding():
    cfg = tiny_config()
    nat, ref = NativeLayerOps(LIB.ops, cfg), TorchLayerOps(cfg, torch.bfloat16, CPU)
    torch.manual_seed(0)
    x, w = torch.randn(9, cfg.hidden_size).bfloat16(), torch.randn(cfg.hidden_size).bfloat16()
    assert (nat.rms_norm(x, w, 1e-5).float() - ref.rms_norm(x, w, 1e-5).float()).abs().max() < 0.05
    width = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
    qkv = torch.randn(9, width).bfloat16()
    pos = torch.tensor([0, 1, 2, 15, 16, 100, 1000, 2000, 2047])
    rotated = nat.rotation(pos)(qkv.clone()), ref.rotation(pos)(qkv.clone())
    # torch's tables are bf16 (the angle itself is off by up to 2^-8), the kernel's float32.
    assert (rotated[0].float() - rotated[1].float()).abs().max() < 0.05
    gate_up = torch.randn(9, 2 * cfg.intermediate_size).bfloat16() * 3
    # torch rounds silu(gate) before the product: at most two roundings apart.
    got, want = nat.silu_mul(gate_up).float(), ref.silu_mul(gate_up).float()
    assert ((got - want).abs() <= want.abs() * 2**-7 + 1e-6).all()


def test_a_position_past_the_rotary_table_is_refused():
    cfg = tiny_config()
    with pytest.raises(IndexError):
        NativeLayerOps(LIB.ops, cfg).rotation(torch.tensor([3, cfg.context_length]))


def test_tiny_model_forward_agrees_across_ops(tiny_model):
    model = LlamaModel(
        tiny_model.config, tiny_model.weights, torch.bfloat16, q4_max_rows=0, native_ops=LIB.ops
    )
    assert isinstance(model.ops, NativeLayerOps)
    ids = torch.randint(3, 40000, (40,), generator=torch.Generator().manual_seed(1))
    with_c = _prefill_logits(model, ids)
    model.ops = TorchLayerOps(model.config, torch.bfloat16, CPU)
    with_torch = _prefill_logits(model, ids)
    # The tiny model's logits are in the hundreds (scaled embeddings): compare relative.
    assert ((with_c - with_torch).abs().max() / with_torch.abs().max()) < 0.02
    assert (with_c.argmax(-1) == with_torch.argmax(-1)).float().mean() > 0.9


@pytest.mark.e2e
def test_real_model_bf16_logits_are_no_further_from_float32_with_the_c_ops(embedded_model):
    """The kernels round once per op (torch rounds after every step) and keep float32 rotary
    tables, so the bf16 model should track float32 at least as closely as with torch ops."""
    cfg, weights = embedded_model.config, embedded_model.weights
    tok = embedded_model.tokenizer
    text = (
        "In the beginning God created the heaven and the earth. And the earth was without "
        "form, and void; and darkness was upon the face of the deep."
    )
    ids = torch.tensor(tok.encode(text))
    exact = _prefill_logits(LlamaModel(cfg, weights, torch.float32, q4_max_rows=0), ids)
    model = LlamaModel(cfg, weights, torch.bfloat16, q4_max_rows=0, native_ops=LIB.ops)
    with_c = _prefill_logits(model, ids)
    model.ops = TorchLayerOps(cfg, torch.bfloat16, CPU)
    with_torch = _prefill_logits(model, ids)
    err_c, err_torch = (with_c - exact).abs().mean(), (with_torch - exact).abs().mean()
    assert err_c <= 1.05 * err_torch, (err_c, err_torch)
    assert (with_c.argmax(-1) == exact.argmax(-1)).float().mean() >= 0.95


@pytest.mark.skipif(LIB is None or LIB.matmul is None, reason="no AMX tiles here")
def test_tiny_model_forward_agrees_between_tile_and_onednn_matmuls(tiny_model):
    model = LlamaModel(
        tiny_model.config,
        tiny_model.weights,
        torch.bfloat16,
        q4_max_rows=0,
        native_ops=LIB.ops,
        tile_matmul=LIB.matmul,
        tile_max_rows=64,
    )
    assert model.tile is not None and all(layer.tiles for layer in model.layers)
    assert (model._path(40), model._path(65)) == ("tile", "packed")
    ids = torch.randint(3, 40000, (40,), generator=torch.Generator().manual_seed(2))
    with_tiles = _prefill_logits(model, ids)
    model.tile_max_rows = 0  # every step on oneDNN's packed weights
    with_onednn = _prefill_logits(model, ids)
    assert ((with_tiles - with_onednn).abs().max() / with_onednn.abs().max()) < 0.02
    assert (with_tiles.argmax(-1) == with_onednn.argmax(-1)).float().mean() > 0.9


def test_a_step_without_logit_rows_runs_on_every_matmul_path(tiny_model):
    """A fill asks for no logits: the head must not be sent to a path that is not there."""
    tiles = LIB.matmul if LIB is not None else None
    for tile_matmul in {None, tiles}:
        model = LlamaModel(
            tiny_model.config, tiny_model.weights, torch.bfloat16, tile_matmul=tile_matmul
        )
        cfg, ids = model.config, torch.arange(3, 8)
        kv = KVCache(cfg, 1, 16, model.dtype)
        plan = AttentionPlan.build(kv, cfg.head_dim**-0.5, cfg.num_heads, [], [([0], 0, 5)])
        logits = model.forward(ids, torch.arange(5), plan, torch.empty(0, dtype=torch.long))
        assert logits.shape == (0, cfg.vocab_size)
