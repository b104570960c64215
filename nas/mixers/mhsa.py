"""``mhsa``: CAFormer's multi-head self-attention token mixer.

Spec: shared/specs/mixers.md §2. Parameter names (``qkv``, ``proj``) match timm's and sail-sg's ``Attention``
so their state dicts load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nas.mixers.base import Grid, Knob, Knobs, MixerDef, divides, head_dim_knob, register


class MHSAMixer(nn.Module):
    """Vanilla multi-head self-attention (Vaswani et al. 2017) as used in CAFormer (arXiv 2210.13452).

    ``H = dim // head_dim`` heads; ``qkv = Linear(C, 3C, bias=qkv_bias)``, ``proj = Linear(C, C, no bias)``;
    scaled dot-product attention with scale ``head_dim ** -0.5`` through ``F.scaled_dot_product_attention``
    (FlashAttention / memory-efficient kernels on GPU, math path elsewhere). Channels-last ``[B, H, W, C]``.
    """

    def __init__(self, dim: int, grid: Grid, head_dim: int = 32, qkv_bias: bool = False) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.num_heads = dim // head_dim
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        qkv = self.qkv(x.reshape(B, H * W, C)).reshape(B, H * W, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, N, head_dim]
        o = F.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(B, H, W, C))


def _feasibility(dim: int, grid: Grid, knobs: Knobs) -> list[str]:
    return divides(dim, knobs["head_dim"], "head_dim")


def _params(dim: int, grid: Grid, knobs: Knobs) -> int:
    return 4 * dim * dim + (3 * dim if knobs["qkv_bias"] else 0)


def _macs(dim: int, grid: Grid, knobs: Knobs) -> int:
    n = grid[0] * grid[1]
    return 4 * n * dim * dim + 2 * n * n * dim  # qkv + proj projections, QK^T and AV


MHSA = register(
    MixerDef(
        name="mhsa",
        cls=MHSAMixer,
        knobs={
            "head_dim": head_dim_knob("channels per head; heads = dim // head_dim"),
            "qkv_bias": Knob("qkv_bias", bool, False, (False, True), "bias on the qkv projection"),
        },
        feasibility_fn=_feasibility,
        params_fn=_params,
        macs_fn=_macs,
        doc="CAFormer multi-head self-attention via SDPA (O(N^2 C)).",
    )
)
