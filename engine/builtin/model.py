"""Llama-family decoder in plain PyTorch (RMSNorm, RoPE, grouped-query attention, SwiGLU).

The model runs over a flat batch of tokens from many sequences at once; attention is
delegated to a per-step `AttentionPlan`, which knows each token's sequence and KV slots, and
the small per-layer ops to `engine/builtin/layer_ops.py` (torch ops, or C kernels on CPU).
Projections are fused (q|k|v and gate|up) so a step issues few, large matmuls. On CPU in
bf16 a step multiplies by one of several forms of the same weights, chosen by its token
count (`_path`): the file's own 4-bit groups for the smallest decode batches, the C tile
matmul's packed copy for decode-size steps, oneDNN's packed layout for prefill.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from engine.builtin import quant
from engine.builtin.config import ModelConfig
from engine.builtin.layer_ops import LayerOps, NativeLayerOps, TorchLayerOps
from parrot_kernels import native


class Attention(Protocol):
    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """q [T, Hq, D], new k/v [T, Hkv, D] -> attention output [T, Hq, D]."""


@dataclass(slots=True)
class LayerWeights:
    attn_norm: torch.Tensor
    qkv: torch.Tensor  # [(Hq + 2 Hkv) * D, hidden]
    o: torch.Tensor
    mlp_norm: torch.Tensor
    gate_up: torch.Tensor  # [2 * intermediate, hidden]
    down: torch.Tensor
    q4: dict[str, quant.Q4Weight] | None = None  # 4-bit forms for small batches
    tiles: dict[str, native.TileWeight] | None = None  # AMX tile forms for decode batches


_PROJECTIONS = ("qkv", "o", "gate_up", "down")


_mkldnn = torch.ops.mkldnn if torch.backends.mkldnn.is_available() else None


def _prepack(w: torch.Tensor) -> torch.Tensor:
    """oneDNN's blocked layout of a bf16 weight. A plain weight is re-packed inside every
    matmul call; packing once cuts a 32-row decode step's matmul time by about a sixth and
    a 64-row one's by a third on a 2-core CPU."""
    return _mkldnn._reorder_linear_weight(w, 32)


class LlamaModel:
    def __init__(
        self,
        config: ModelConfig,
        weights: dict[str, torch.Tensor],
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device = "cpu",
        q4_max_rows: int = 8,
        native_ops: native.LayerOps | None = None,
        tile_matmul: native.TileMatmul | None = None,
        tile_max_rows: int = 64,
    ):
        """`q4_max_rows`: batches of at most this many tokens use the 4-bit weights when the
        model's weights are exactly 4-bit representable (0 disables the 4-bit path).
        `native_ops`: the C kernels for norms, rotary embedding and SwiGLU, used for bf16 on
        CPU; None keeps torch ops. `tile_matmul`: the AMX tile matmul, used for bf16 on CPU
        in steps of at most `tile_max_rows` tokens (decode; prefill keeps oneDNN)."""
        self.config = config
        self.dtype = dtype
        self.device = torch.device(device)

        def w(name: str) -> torch.Tensor:
            return weights[name].to(device=self.device, dtype=dtype).contiguous()

        norm = w

        self.embed = w("model.embed_tokens.weight")
        head = "model.embed_tokens.weight" if config.tie_word_embeddings else "lm_head.weight"
        self.lm_head = self.embed if config.tie_word_embeddings else w(head)
        self.final_norm = norm("model.norm.weight")
        self.layers = []
        for i in range(config.num_layers):
            p = f"model.layers.{i}."
            self.layers.append(
                LayerWeights(
                    attn_norm=norm(p + "input_layernorm.weight"),
                    qkv=torch.cat(
                        [w(p + f"self_attn.{n}_proj.weight") for n in ("q", "k", "v")]
                    ).contiguous(),
                    o=w(p + "self_attn.o_proj.weight"),
                    mlp_norm=norm(p + "post_attention_layernorm.weight"),
                    gate_up=torch.cat(
                        [w(p + "mlp.gate_proj.weight"), w(p + "mlp.up_proj.weight")]
                    ).contiguous(),
                    down=w(p + "mlp.down_proj.weight"),
                )
            )
        self.q4_max_rows = 0
        if q4_max_rows and quant.available(dtype, self.device):
            self._init_q4(weights, q4_max_rows)
        self.packed = _mkldnn is not None and self.device.type == "cpu" and dtype == torch.bfloat16
        self.tile: native.TileMatmul | None = None
        self.tile_max_rows = 0
        if tile_matmul is not None and tile_max_rows and self.packed:
            self._init_tiles(tile_matmul, tile_max_rows)
        # On CPU in bf16 the plain layer weights are replaced by oneDNN's packed layout
        # (after the tile forms were made from them).
        if self.packed:
            for layer in self.layers:
                for name in _PROJECTIONS:
                    setattr(layer, name, _prepack(getattr(layer, name)))
            self.lm_head = _prepack(self.lm_head)
        self.ops: LayerOps = (
            NativeLayerOps(native_ops, config)
            if native_ops is not None and dtype == torch.bfloat16 and self.device.type == "cpu"
            else TorchLayerOps(config, dtype, self.device)
        )

    def _init_q4(self, weights: dict[str, torch.Tensor], max_rows: int) -> None:
        packs = []
        for i in range(self.config.num_layers):
            p = f"model.layers.{i}."

            def cat(*names: str, p: str = p) -> torch.Tensor:
                return torch.cat([weights[p + n] for n in names])

            sources = {
                "qkv": cat(*(f"self_attn.{n}_proj.weight" for n in "qkv")),
                "o": weights[p + "self_attn.o_proj.weight"],
                "gate_up": cat("mlp.gate_proj.weight", "mlp.up_proj.weight"),
                "down": weights[p + "mlp.down_proj.weight"],
            }
            layer = {name: quant.pack_if_exact(w) for name, w in sources.items()}
            if any(v is None for v in layer.values()):
                return  # not a 4-bit model: a lossy re-quantisation is not done silently
            packs.append(layer)
        for layer, q4 in zip(self.layers, packs, strict=True):
            layer.q4 = q4
        self.q4_max_rows = max_rows

    def _init_tiles(self, tile: native.TileMatmul, max_rows: int) -> None:
        weights = [getattr(layer, name) for layer in self.layers for name in _PROJECTIONS]
        if not all(map(tile.supports, [*weights, self.lm_head])):
            return  # a shape the kernel does not tile: every step keeps oneDNN
        for layer in self.layers:
            layer.tiles = {name: tile.pack(getattr(layer, name)) for name in _PROJECTIONS}
        self.tile_head = tile.pack(self.lm_head)
        self.tile = tile
        self.tile_max_rows = max_rows

    def _path(self, rows: int) -> str:
        """Which form of the weights a step of `rows` tokens multiplies by."""
        if rows <= self.q4_max_rows:
            return "q4"
        if self.tile is not None and rows <= self.tile_max_rows:
            return "tile"
        return "packed" if self.packed else "plain"

    def _project(self, h: torch.Tensor, layer: LayerWeights, name: str, path: str) -> torch.Tensor:
        if path == "q4":
            return layer.q4[name].matmul(h)
        if path == "tile":
            return self.tile.linear(h, layer.tiles[name])
        if path == "packed":
            return _mkldnn._linear_pointwise(h, getattr(layer, name), None, "none", [], "")
        return F.linear(h, getattr(layer, name))

    def _residual(
        self, x: torch.Tensor, h: torch.Tensor, layer: LayerWeights, name: str, path: str
    ) -> torch.Tensor:
        """x + h @ w.T with the add fused into the matmul where the path allows it."""
        if path == "q4":
            return x + layer.q4[name].matmul(h)
        if path == "tile":
            return self.tile.linear(h, layer.tiles[name], residual=x)
        if path == "packed":
            return _mkldnn._linear_pointwise.binary(h, x, getattr(layer, name), None, "add")
        return torch.addmm(x, h, getattr(layer, name).t())

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        if self.tile is not None and h.shape[0] <= self.tile_max_rows:
            return self.tile.linear(h, self.tile_head).float()
        if self.packed:
            return _mkldnn._linear_pointwise(h, self.lm_head, None, "none", [], "").float()
        return F.linear(h, self.lm_head).float()

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attention: Attention,
        logit_rows: torch.Tensor,
    ) -> torch.Tensor:
        """input_ids/positions [T]; returns float32 logits for the rows in `logit_rows`."""
        c = self.config
        t = input_ids.shape[0]
        hq, hkv, d = c.num_heads, c.num_kv_heads, c.head_dim
        eps, ops = c.rms_norm_eps, self.ops
        rotate = ops.rotation(positions)
        x = F.embedding(input_ids, self.embed)
        path = self._path(t)
        for i, layer in enumerate(self.layers):
            h = ops.rms_norm(x, layer.attn_norm, eps)
            qkv = self._project(h, layer, "qkv", path)
            qk = rotate(qkv)
            v = qkv[:, (hq + hkv) * d :].view(t, hkv, d)
            attn = attention(i, qk[:, :hq], qk[:, hq:], v)
            x = self._residual(x, attn.reshape(t, hq * d), layer, "o", path)
            h = ops.rms_norm(x, layer.mlp_norm, eps)
            gate_up = self._project(h, layer, "gate_up", path)
            x = self._residual(x, ops.silu_mul(gate_up), layer, "down", path)
        h = ops.rms_norm(x.index_select(0, logit_rows), self.final_norm, eps)
        return self._logits(h)
