"""Llama-family decoder in plain PyTorch (RMSNorm, RoPE, grouped-query attention, SwiGLU).

The model runs over a flat batch of tokens from many sequences at once; attention is
delegated to a per-step `AttentionPlan`, which knows each token's sequence and KV slots.
Projections are fused (q|k|v and gate|up) so a step issues few, large matmuls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from engine.builtin.config import ModelConfig


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


class LlamaModel:
    def __init__(
        self,
        config: ModelConfig,
        weights: dict[str, torch.Tensor],
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device = "cpu",
    ):
        self.config = config
        self.dtype = dtype
        self.device = torch.device(device)

        def w(name: str) -> torch.Tensor:
            return weights[name].to(device=self.device, dtype=dtype).contiguous()

        def norm(name: str) -> torch.Tensor:
            # Norm weights stay float32: they scale the float32-normalized activations.
            return weights[name].to(device=self.device, dtype=torch.float32).contiguous()

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
        self._init_rope()

    def _init_rope(self) -> None:
        c = self.config
        inv_freq = 1.0 / (
            c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float64) / c.head_dim)
        )
        angles = torch.outer(torch.arange(c.context_length, dtype=torch.float64), inv_freq)
        self._cos = angles.cos().to(self.device, torch.float32)
        self._sin = angles.sin().to(self.device, torch.float32)

    def _rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.config.rms_norm_eps)
        return (weight * xf).to(self.dtype)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate-half RoPE (HF layout). x [T, H, D]; cos/sin [T, 1, D/2] float32."""
        half = x.shape[-1] // 2
        xf = x.float()
        x1, x2 = xf[..., :half], xf[..., half:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)

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
        cos = self._cos[positions].unsqueeze(1)
        sin = self._sin[positions].unsqueeze(1)
        x = F.embedding(input_ids, self.embed)
        for i, layer in enumerate(self.layers):
            h = self._rms_norm(x, layer.attn_norm)
            qkv = F.linear(h, layer.qkv)
            q = self._rope(qkv[:, : hq * d].view(t, hq, d), cos, sin)
            k = self._rope(qkv[:, hq * d : (hq + hkv) * d].view(t, hkv, d), cos, sin)
            v = qkv[:, (hq + hkv) * d :].view(t, hkv, d)
            attn = attention(i, q, k, v)
            x = x + F.linear(attn.reshape(t, hq * d), layer.o)
            h = self._rms_norm(x, layer.mlp_norm)
            gate, up = F.linear(h, layer.gate_up).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, layer.down)
        h = self._rms_norm(x.index_select(0, logit_rows), self.final_norm)
        return F.linear(h, self.lm_head).float()
