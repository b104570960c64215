"""Static-key mixers: SKA and CSKA (Hu, Zhou, Rostami, "Static Key Attention in Vision", arXiv 2412.07049).

Both replace the dynamic key of attention by learned parameters that are tied to token *positions* of the grid
the stage was built for, so their parameter count grows with N and an input of another grid needs the key
resampled (spec R1, a [CHOICE]: the paper says nothing about resolution changes). Equations, parameter and
MAC formulas: shared/specs/mixers.md §3-§4.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nas.mixers.base import Grid, Knob, Knobs, MixerDef, divides, head_dim_knob, heads_knob, register


def resample_key_grid(t: torch.Tensor, src: Grid, dst: Grid) -> torch.Tensor:
    """Resize a ``[G, h0*w0, F]`` tensor whose middle axis indexes the positions of grid ``src`` to ``dst``.

    Spec R1 [CHOICE]: treat the key like a ViT position embedding, i.e. a ``G*F``-channel image on the build
    grid, resized bicubically (align_corners=False, antialiased when shrinking) and flattened back.
    """
    if tuple(src) == tuple(dst):
        return t
    g, _, f = t.shape
    img = t.transpose(1, 2).reshape(1, g * f, *src)
    shrink = dst[0] < src[0] or dst[1] < src[1]
    img = F.interpolate(img.float(), size=tuple(dst), mode="bicubic", align_corners=False, antialias=shrink)
    return img.to(t.dtype).reshape(g, f, dst[0] * dst[1]).transpose(1, 2)


def _few_tokens(grid: Grid) -> list[str]:
    h, w = grid
    if h < 1 or w < 1:
        return [f"grid {grid} must have positive sides"]
    n = h * w
    if n == 1:
        return [
            "grid 1x1 has N = 1 token: softmax over a single static key is identically 1, so the key gets zero "
            "gradient and the mixer collapses to a linear map; use it on a stage with a grid of at least 2x2"
        ]
    if n < 4:
        return [
            f"grid {h}x{w} has N = {n} < 4 tokens: the static key would mix fewer than 4 tokens; "
            "use it on a stage with at least 4 tokens (e.g. a 2x2 grid)"
        ]
    return []


# --------------------------------------------------------------------------------------------- SKA


class StaticKeyAttention(nn.Module):
    """SKA: attention whose key is a learned static matrix per head (arXiv 2412.07049 §4.1, Alg. 1).

    The two published forms are two knob pairs (spec §13; the paper's §6.1 finds the scale makes little difference):

    * ``q_proj="repo", scale="inv_sqrt_d"`` — **the default**: the authors' ImageNet code (class ``STU`` in
      zizhao-hu/SKA ``metaformer_baselines.py``): identity query, ``v`` and ``proj`` without bias, logits times
      ``head_dim ** -0.5``;
    * ``q_proj="paper", scale="none"`` — Alg. 1 as printed: Linear ``q`` and ``v`` with bias, ``proj`` with bias,
      no logit scale.

    Other combinations are allowed as search knobs but are neither form. ``scale="learned"`` is an LSA-style
    temperature (init log(d^-0.5)) from the repo's small-scale ViT. The static key ``[H, N0, d]`` is drawn from
    ``randn`` as in Alg. 1; it is expanded over the batch with stride 0 into SDPA.
    """

    def __init__(
        self, dim: int, grid: Grid, head_dim: int = 32, q_proj: str = "repo", scale: str = "inv_sqrt_d"
    ) -> None:
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.heads, self.head_dim = dim // head_dim, head_dim
        paper = q_proj == "paper"
        self.q = nn.Linear(dim, dim, bias=True) if paper else nn.Identity()
        self.v = nn.Linear(dim, dim, bias=paper)
        self.proj = nn.Linear(dim, dim, bias=paper)
        self.key = nn.Parameter(torch.randn(self.heads, self.grid[0] * self.grid[1], head_dim))
        self.scale_mode = scale
        if scale == "learned":
            self.log_scale = nn.Parameter(torch.tensor(math.log(head_dim**-0.5)))
        self.fixed_scale = head_dim**-0.5 if scale == "inv_sqrt_d" else 1.0

    def static_key(self, hw: Grid) -> torch.Tensor:
        """The static key ``[H, h*w, d]`` for grid ``hw`` (the parameter itself at the build grid)."""
        return resample_key_grid(self.key, self.grid, hw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        n = h * w
        q = self.q(x).reshape(b, n, self.heads, self.head_dim).transpose(1, 2)
        v = self.v(x).reshape(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.static_key((h, w))
        if self.scale_mode == "learned":
            k = k * self.log_scale.exp()  # the key is batch-free, so scaling it is cheaper than scaling q
        # stride-0 expand: no copy, and autograd sums the key gradient over the batch
        k = k.to(q.dtype).unsqueeze(0).expand(b, -1, -1, -1)
        o = F.scaled_dot_product_attention(q, k, v, scale=self.fixed_scale)
        return self.proj(o.transpose(1, 2).reshape(b, h, w, c))


def _ska_feasibility(dim: int, grid: Grid, k: Knobs) -> list[str]:
    return divides(dim, k["head_dim"], "head_dim") + _few_tokens(grid)


def _ska_params(dim: int, grid: Grid, k: Knobs) -> int:
    n = grid[0] * grid[1]
    base = 3 * dim * dim + 3 * dim if k["q_proj"] == "paper" else 2 * dim * dim
    return base + n * dim + (1 if k["scale"] == "learned" else 0)


def _ska_macs(dim: int, grid: Grid, k: Knobs) -> int:
    n = grid[0] * grid[1]
    projections = 3 if k["q_proj"] == "paper" else 2
    return projections * n * dim * dim + 2 * n * n * dim


SKA = register(
    MixerDef(
        name="ska",
        cls=StaticKeyAttention,
        knobs={
            "head_dim": head_dim_knob(),
            "q_proj": Knob(
                "q_proj", str, "repo", ("paper", "repo"), "repo: STU's identity q (default); paper: Alg. 1's Linear q"
            ),
            "scale": Knob(
                "scale",
                str,
                "inv_sqrt_d",
                ("inv_sqrt_d", "none", "learned"),
                "logit scale (STU: inv_sqrt_d; Alg. 1: none)",
            ),
        },
        feasibility_fn=_ska_feasibility,
        params_fn=_ska_params,
        macs_fn=_ska_macs,
        doc="Static Key Attention (arXiv 2412.07049): learned per-position key, O(N^2 C), N*C key params.",
    )
)


# --------------------------------------------------------------------------------------------- CSKA


class ConvStaticKeyAttention(nn.Module):
    """CSKA: a grouped convolution over the query map produces the attention logits (arXiv 2412.07049 §4.2).

    Follows the authors' ``CSTU`` (zizhao-hu/SKA ``metaformer_baselines.py``), which is where the paper's Alg. 2
    differs: logits times ``(C/H)^-0.5`` when ``scaled`` (Alg. 2: no scale; ``scaled=False`` gives that) and a
    bias-free output projection (Alg. 2: ``nn.Linear(dim, dim)`` with bias). Layout: ``qv`` Linear(C, 2C) and
    ``proj`` Linear(C, C) without bias; ``logit_conv`` Conv2d(C, H*N0, k, groups=H, bias) whose output channel
    ``head*N0 + key`` at spatial position ``query`` is the logit.

    Three equal formulations (spec §4 "key identity": ``logits_h[n, m] = unfold(q)_h[n] . W_h[m] + b_h[m]``,
    i.e. SKA on the unfolded query with the conv weights as a static key of dim ``k*k*d``), chosen by ``impl``:
    ``"conv"`` runs the grouped conv directly; ``"unfold"`` does one batched GEMM per head over the unfolded
    query of every image (``baddbmm``; the bias rides along as the GEMM's addend), softmax, and ``@ V``;
    ``"sdpa"`` feeds the unfolded query (plus a constant-1 feature carrying the bias) and the weights expanded
    over the batch (stride 0) to SDPA, which can avoid materialising the ``[B, H, N, N]`` logits on GPU.
    The default ``unfold`` measured fastest on CPU at CAFormer-S18 stage shapes (benchmarks/RESULTS.md); on
    GPU it is plain batched GEMMs too, while ``sdpa`` only pays off if a fused kernel accepts key dim
    ``k*k*d + 1`` != value dim ``d`` (unverified: benchmarks/mixers.py times all three and probes the backends).
    The conv output channels index *keys*, so at another grid the weight is resampled along its key-position
    axis (R1) while the conv still slides over however many query positions there are.
    """

    IMPLS = ("conv", "unfold", "sdpa")

    def __init__(
        self,
        dim: int,
        grid: Grid,
        heads: int | None = None,
        kernel_size: int = 3,
        scaled: bool = True,
        impl: str = "unfold",
    ) -> None:
        super().__init__()
        if impl not in self.IMPLS:
            raise ValueError(f"impl must be one of {self.IMPLS}, got {impl!r}")
        self.grid = (int(grid[0]), int(grid[1]))
        self.heads = heads or max(1, dim // 16)
        self.head_dim, self.kernel_size = dim // self.heads, kernel_size
        n0 = self.grid[0] * self.grid[1]
        self.qv = nn.Linear(dim, 2 * dim, bias=False)
        self.logit_conv = nn.Conv2d(dim, self.heads * n0, kernel_size, padding=kernel_size // 2, groups=self.heads)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.scale = self.head_dim**-0.5 if scaled else 1.0
        self.impl = impl

    def conv_params(self, hw: Grid) -> tuple[torch.Tensor, torch.Tensor]:
        """Conv weight ``[H*N, d, k, k]`` and bias ``[H*N]`` for grid ``hw`` (resampled over the key axis)."""
        w, b = self.logit_conv.weight, self.logit_conv.bias
        if tuple(hw) == self.grid:
            return w, b
        hh, n0, n = self.heads, self.grid[0] * self.grid[1], hw[0] * hw[1]
        w = resample_key_grid(w.reshape(hh, n0, -1), self.grid, hw).reshape(hh * n, *w.shape[1:])
        b = resample_key_grid(b.reshape(hh, n0, 1), self.grid, hw).reshape(hh * n)
        return w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        n, hh, d = h * w, self.heads, self.head_dim
        q, v = self.qv(x).chunk(2, dim=-1)
        v = v.reshape(b, n, hh, d).transpose(1, 2)
        qmap = q.permute(0, 3, 1, 2)  # [B, C, h, w]; channel = head*d + j as the conv groups expect
        weight, bias = self.conv_params((h, w))
        weight, bias, kk = weight.to(q.dtype), bias.to(q.dtype), self.kernel_size
        if self.impl == "conv":
            logits = F.conv2d(qmap, weight, bias, padding=kk // 2, groups=hh)
            # [B, H*N_key, h, w] -> [B, H, N_query, N_key]; free when conv2d returned channels-last memory
            logits = logits.permute(0, 2, 3, 1).reshape(b, n, hh, n).transpose(1, 2)
            o = (logits * self.scale).softmax(dim=-1) @ v
        elif self.impl == "unfold":
            # heads outermost so each head is one [B*N, k*k*d] x [k*k*d, N] GEMM against an un-expanded key
            u = F.unfold(qmap, kk, padding=kk // 2).reshape(b, hh, d * kk * kk, n).permute(1, 0, 3, 2)
            key_t = weight.reshape(hh, n, -1).transpose(1, 2)
            logits = torch.baddbmm(
                (bias * self.scale).reshape(hh, 1, n), u.reshape(hh, b * n, -1), key_t, alpha=self.scale
            )
            o = (logits.softmax(dim=-1).reshape(hh, b, n, n) @ v.transpose(0, 1)).transpose(0, 1)
        else:
            u = F.unfold(qmap, kk, padding=kk // 2).reshape(b, hh, d * kk * kk, n).transpose(-1, -2)
            u = torch.cat([u, u.new_ones(b, hh, n, 1)], dim=-1)
            key = torch.cat([weight.reshape(hh, n, -1), bias.reshape(hh, n, 1)], dim=-1)
            o = F.scaled_dot_product_attention(u, key.unsqueeze(0).expand(b, -1, -1, -1), v, scale=self.scale)
        return self.proj(o.transpose(1, 2).reshape(b, h, w, c))


def _cska_feasibility(dim: int, grid: Grid, k: Knobs) -> list[str]:
    reasons = divides(dim, k["heads"], "heads")
    few = _few_tokens(grid)
    ks = k["kernel_size"]
    if few and grid[0] * grid[1] == 1 and ks > 1:
        few[0] += f" (and on a 1x1 grid a {ks}x{ks} logit conv only ever uses its centre tap)"
    reasons += few
    if not few and ks // 2 >= min(grid):
        reasons.append(
            f"kernel_size {ks} on a {grid[0]}x{grid[1]} grid: taps {ks // 2} away from the centre always read "
            f"zero padding, so those conv weights never get gradient; use kernel_size <= {2 * min(grid) - 1}"
        )
    return reasons


def _cska_params(dim: int, grid: Grid, k: Knobs) -> int:
    n = grid[0] * grid[1]
    return 3 * dim * dim + k["kernel_size"] ** 2 * n * dim + k["heads"] * n


def _cska_macs(dim: int, grid: Grid, k: Knobs) -> int:
    n = grid[0] * grid[1]
    return 3 * n * dim * dim + k["kernel_size"] ** 2 * n * n * dim + n * n * dim


CSKA = register(
    MixerDef(
        name="cska",
        cls=ConvStaticKeyAttention,
        knobs={
            "heads": heads_knob(16, "heads = conv groups, must be >= 1 and divide dim"),
            "kernel_size": Knob("kernel_size", int, 3, (1, 3, 5), "logit conv kernel (paper: 3)"),
            "scaled": Knob("scaled", bool, True, (True, False), "multiply logits by head_dim^-0.5 (CSTU)"),
        },
        feasibility_fn=_cska_feasibility,
        params_fn=_cska_params,
        macs_fn=_cska_macs,
        doc="Convolutional Static Key Attention (arXiv 2412.07049): grouped conv logits, O(k^2 N^2 C).",
    )
)
