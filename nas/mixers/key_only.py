"""Key-only attention (after Li, Liu, "LinGlos", arXiv 2207.00188) — a [CHOICE] design, linear in N.

Only the abstract could be read ("excludes query-key pairwise interactions and uses a compute-efficient
saliency-gate to obtain attention weights", "linear computational and memory complexities"), so the formula is
the proposal of shared/specs/mixers.md §6, not a reproduction of the paper.
"""

from __future__ import annotations

import torch
from torch import nn

from nas.mixers.base import Grid, Knob, Knobs, MixerDef, divides, heads_knob, register


class KeyOnlyAttention(nn.Module):
    """Saliency-gated global context: attention weights from keys only, no N x N term. [CHOICE] (spec §6).

    Spec form per head h: ``k = x W_K``, ``v = x W_V``, ``a = softmax_n(w_h . k_n / sqrt(d))``,
    ``g_h = sum_n a_n v_n``; ``mode="broadcast"``: ``y_n = W_O [g_1..g_H]`` (the same vector at every token, so
    W_O runs once per image); ``mode="qgate"``: ``y_n = W_O [q_{1,n} * g_1 .. q_{H,n} * g_H]`` with ``q = x W_Q``.
    The gate ``w`` starts at zero (uniform weights over tokens).

    Computed in the cheaper but equal order (spec §6 [DERIVED]): ``w_h . W_{K,h} x = (W_{K,h}^T w_h) . x`` turns
    the key projection and the gate into a ``C -> H`` saliency map, and ``W_V`` is applied to the softmax-pooled
    input, ``g_h = W_{V,h} (sum_n a_n x_n)``. The parameters (and so the trained function) are those of the
    spec form; the MACs drop from ``2NC^2 + 2NC + C^2`` to ``2NCH + 2C^2`` (broadcast). In broadcast mode the
    output is the per-image vector expanded over the grid (a stride-0 view).
    """

    def __init__(self, dim: int, grid: Grid, heads: int | None = None, mode: str = "broadcast") -> None:
        super().__init__()
        self.heads = heads or max(1, dim // 32)
        self.head_dim, self.mode = dim // self.heads, mode
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.gate = nn.Parameter(torch.zeros(self.heads, self.head_dim))
        self.q = nn.Linear(dim, dim, bias=False) if mode == "qgate" else None
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        hh, d = self.heads, self.head_dim
        t = x.reshape(b, h * w, c)
        # elementwise multiply-sum, not a matmul: it is per batch, not per image, and tiny (C^2)
        saliency_map = (self.k.weight.reshape(hh, d, c) * self.gate.unsqueeze(-1)).sum(dim=1) * d**-0.5
        a = (t @ saliency_map.t().to(t.dtype)).softmax(dim=1)  # [B, N, H], normalised over tokens
        pooled = a.transpose(1, 2) @ t  # [B, H, C]
        g = torch.einsum("bhc,hdc->bhd", pooled, self.v.weight.reshape(hh, d, c).to(pooled.dtype))
        if self.q is None:
            return self.proj(g.reshape(b, 1, 1, c)).expand(b, h, w, c)
        gated = self.q(x).reshape(b, h, w, hh, d) * g.reshape(b, 1, 1, hh, d)
        return self.proj(gated.reshape(b, h, w, c))


def _feasibility(dim: int, grid: Grid, k: Knobs) -> list[str]:
    return divides(dim, k["heads"], "heads")


def _params(dim: int, grid: Grid, k: Knobs) -> int:
    return (3 if k["mode"] == "broadcast" else 4) * dim * dim + dim


def _macs(dim: int, grid: Grid, k: Knobs) -> int:
    n, hh = grid[0] * grid[1], k["heads"]
    context = 2 * n * dim * hh + dim * dim  # saliency map + pooling + W_V on the pooled input
    if k["mode"] == "broadcast":
        return context + dim * dim
    return context + 2 * n * dim * dim  # query projection and per-token output projection


KEY_ONLY = register(
    MixerDef(
        name="key_only",
        cls=KeyOnlyAttention,
        knobs={
            "heads": heads_knob(32, "heads, must be >= 1 and divide dim"),
            "mode": Knob(
                "mode",
                str,
                "broadcast",
                ("broadcast", "qgate"),
                "broadcast: one context vector per image; qgate: gated per token by a query",
            ),
        },
        feasibility_fn=_feasibility,
        params_fn=_params,
        macs_fn=_macs,
        doc="[CHOICE] key-only attention after arXiv 2207.00188: saliency-gated global context, O(N C H + C^2).",
    )
)
