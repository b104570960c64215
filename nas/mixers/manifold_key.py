"""Manifold-key attention (after Meng, Goodwin, Yazidi, Engelstad, arXiv 2402.00534) — a [CHOICE] design.

Only the paper's abstract, TL;DR and figure captions could be read, so this is the proposal of
shared/specs/mixers.md §5, not a reproduction; see the class docstring for where it departs from that spec.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nas.mixers.base import Grid, Knob, Knobs, MixerDef, divides, head_dim_knob, register


class ManifoldKeyAttention(nn.Module):
    """Attention whose key comes from a multi-chart MLP branch, decoupled from query and value.

    [CHOICE] throughout (spec §5; the method section of arXiv 2402.00534 was not available):
    ``Q, V = X W_Q, X W_V``; ``Z_m = X * s_m`` (chart expansion, ``s_m`` init 1); ``U_m`` = per-chart MLP of
    ``layers`` bias-free C->C layers with GELU between them; ``K = Agg(U_1..U_M)`` with ``aggregation`` one of
    ``mean``, ``linear`` (``[U_1..U_M] W_f``), ``spatial`` (mean, then a depthwise 3x3 conv on the token grid),
    ``gated`` (softmax over charts of a linear score of each chart's token mean); ``Y = SDPA(Q, K, V) W_O``.

    Departures from the spec's sketch, each because the sketched term cannot change the function:
    * no bias in the ``spatial`` conv or the ``gated`` score: a per-channel key bias adds ``q.b`` to every logit
      of a query and a shared score bias adds the same value to every chart, and softmax removes both;
    * ``context_broadcast`` mixes the token mean into the attention *output* (``o <- (o + mean_n o) / 2``,
      uniform attention as in arXiv 2210.08457), because on the key ``K <- (K + mean_n K) / 2`` only halves the
      logits up to a per-query constant.

    Fast path: the chart scale is folded into the first layer so all charts are one ``C -> M*C`` GEMM, and for
    ``mean``/``spatial`` the last layer and the chart mean are one ``M*C -> C`` GEMM; MACs are unchanged.
    """

    def __init__(
        self,
        dim: int,
        grid: Grid,
        charts: int = 8,
        aggregation: str = "mean",
        context_broadcast: bool = False,
        layers: int = 2,
        head_dim: int = 32,
    ) -> None:
        super().__init__()
        self.charts, self.aggregation, self.context_broadcast = charts, aggregation, context_broadcast
        self.heads, self.head_dim = dim // head_dim, head_dim
        self.qv = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.chart_scale = nn.Parameter(torch.ones(charts, dim))
        # per-chart weights stored [chart, in, out]; trunc_normal(0.02) like every Linear of the backbone
        self.chart_layers = nn.ParameterList(
            [nn.Parameter(nn.init.trunc_normal_(torch.empty(charts, dim, dim), std=0.02)) for _ in range(layers)]
        )
        self.fuse: nn.Module | None = None
        if aggregation == "linear":
            self.fuse = nn.Linear(charts * dim, dim, bias=False)
        elif aggregation == "spatial":
            self.fuse = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)
        elif aggregation == "gated":
            self.fuse = nn.Linear(dim, 1, bias=False)

    def key(self, x: torch.Tensor) -> torch.Tensor:
        """The manifold key ``[B, h, w, C]`` of a channels-last input."""
        b, h, w, c = x.shape
        m, layers = self.charts, list(self.chart_layers)
        t = x.reshape(-1, c)
        first = (self.chart_scale.unsqueeze(-1) * layers[0]).permute(1, 0, 2).reshape(c, m * c)
        u = t @ first.to(t.dtype)  # [B*N, M*C], chart-major columns
        pooled_last = len(layers) == 2 and self.aggregation in ("mean", "spatial")
        if len(layers) == 2:
            u = F.gelu(u)
            if pooled_last:
                k = u @ (layers[1].reshape(m * c, c) / m).to(u.dtype)
            else:
                u = torch.bmm(u.reshape(-1, m, c).transpose(0, 1), layers[1].to(u.dtype)).transpose(0, 1)
        if not pooled_last:
            u = u.reshape(-1, m, c)
            if self.aggregation == "linear":
                k = self.fuse(u.reshape(-1, m * c))
            elif self.aggregation == "gated":
                u = u.reshape(b, h * w, m, c)
                score = self.fuse(u.mean(dim=1)).squeeze(-1)  # [B, M]
                k = (u * score.softmax(dim=-1)[:, None, :, None]).sum(dim=2)
            else:
                k = u.mean(dim=1)
        k = k.reshape(b, h, w, c)
        if self.aggregation == "spatial":
            k = self.fuse(k.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        n = h * w

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)

        q, v = self.qv(x).chunk(2, dim=-1)
        k = self.key(x)
        o = F.scaled_dot_product_attention(heads(q), heads(k).to(q.dtype), heads(v))
        if self.context_broadcast:
            o = 0.5 * (o + o.mean(dim=2, keepdim=True))
        return self.proj(o.transpose(1, 2).reshape(b, h, w, c))


def _agg_params(dim: int, k: Knobs) -> int:
    return {"mean": 0, "linear": k["charts"] * dim * dim, "spatial": 9 * dim, "gated": dim}[k["aggregation"]]


def _agg_macs(dim: int, n: int, k: Knobs) -> int:
    m = k["charts"]
    return {"mean": 0, "linear": n * m * dim * dim, "spatial": 9 * n * dim, "gated": m * dim}[k["aggregation"]]


def _params(dim: int, grid: Grid, k: Knobs) -> int:
    m = k["charts"]
    return 3 * dim * dim + m * dim + k["layers"] * m * dim * dim + _agg_params(dim, k)


def _macs(dim: int, grid: Grid, k: Knobs) -> int:
    n = grid[0] * grid[1]
    return 3 * n * dim * dim + k["layers"] * k["charts"] * n * dim * dim + 2 * n * n * dim + _agg_macs(dim, n, k)


def _feasibility(dim: int, grid: Grid, k: Knobs) -> list[str]:
    return divides(dim, k["head_dim"], "head_dim")


MANIFOLD_KEY = register(
    MixerDef(
        name="manifold_key",
        cls=ManifoldKeyAttention,
        knobs={
            "charts": Knob("charts", int, 8, (2, 4, 8), "number of charts M (paper headline: 8)"),
            "aggregation": Knob(
                "aggregation",
                str,
                "mean",
                ("mean", "linear", "spatial", "gated"),
                "how chart outputs are fused into the key",
            ),
            "context_broadcast": Knob(
                "context_broadcast", bool, False, (False, True), "mix the token mean into the attention output"
            ),
            "layers": Knob("layers", int, 2, (1, 2), "layers of the per-chart MLP"),
            "head_dim": head_dim_knob(),
        },
        feasibility_fn=_feasibility,
        params_fn=_params,
        macs_fn=_macs,
        doc="[CHOICE] manifold-key attention after arXiv 2402.00534: multi-chart MLP key, O(N^2 C + L M N C^2).",
    )
)
