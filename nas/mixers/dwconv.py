"""``dwconv``: ConvFormer's inverted separable convolution (``SepConv``), plus the StarReLU activation.

Spec: shared/specs/mixers.md §1. Layout and parameter names follow sail-sg/metaformer's ``SepConv``
(channels-last, ``nn.Linear`` pointwise layers, ``pwconv1 / act1 / dwconv / pwconv2``) so a timm or sail-sg
state dict maps onto it one to one (timm's 1x1 convs only need a reshape).
"""

from __future__ import annotations

import torch
from torch import nn

from nas.mixers.base import Grid, Knob, Knobs, MixerDef, register


class StarReLU(nn.Module):
    """StarReLU ``s * relu(x)**2 + b`` with learnable scalars (MetaFormer Baselines, arXiv 2210.13452 §3.1).

    Parameter names ``scale`` / ``bias`` match timm's and sail-sg's ``StarReLU``.
    """

    def __init__(self, scale_value: float = 1.0, bias_value: float = 0.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((1,), float(scale_value)))
        self.bias = nn.Parameter(torch.full((1,), float(bias_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.relu(x) ** 2 + self.bias


class SquaredReLU(nn.Module):
    """Squared ReLU ``relu(x)**2`` (So et al., Primer, arXiv 2109.08668), used by the MetaFormer MLP head."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.square(torch.relu(x))


class SepConvMixer(nn.Module):
    """Inverted separable convolution token mixer of ConvFormer (MetaFormer Baselines, arXiv 2210.13452).

    ``y = W2 · DWConv_k(StarReLU(W1 · x))`` with ``W1: C -> rC``, ``W2: rC -> C`` pointwise (no bias) and a
    depthwise ``k x k`` conv (no bias, padding ``k // 2``). Input and output are channels-last
    ``[B, H, W, C]``; the grid argument is unused (the conv works at any resolution).
    """

    def __init__(self, dim: int, grid: Grid, kernel_size: int = 7, expansion: int = 2) -> None:
        super().__init__()
        mid = int(expansion * dim)
        self.pwconv1 = nn.Linear(dim, mid, bias=False)
        self.act1 = StarReLU()
        self.dwconv = nn.Conv2d(mid, mid, kernel_size, padding=kernel_size // 2, groups=mid, bias=False)
        self.pwconv2 = nn.Linear(mid, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.pwconv1(x))
        # the depthwise conv needs NCHW; permute only around it (as sail-sg does)
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.pwconv2(x)


def _feasibility(dim: int, grid: Grid, knobs: Knobs) -> list[str]:
    if knobs["kernel_size"] % 2 == 0:
        return [f"kernel_size {knobs['kernel_size']} must be odd to preserve the grid"]
    return []


def _params(dim: int, grid: Grid, knobs: Knobs) -> int:
    rc, k = int(knobs["expansion"] * dim), knobs["kernel_size"]
    return 2 * rc * dim + k * k * rc + 2  # two pointwise layers, depthwise kernel, StarReLU scale + bias


def _macs(dim: int, grid: Grid, knobs: Knobs) -> int:
    rc, k = int(knobs["expansion"] * dim), knobs["kernel_size"]
    return grid[0] * grid[1] * (2 * rc * dim + k * k * rc)


DWCONV = register(
    MixerDef(
        name="dwconv",
        cls=SepConvMixer,
        knobs={
            "kernel_size": Knob("kernel_size", int, 7, (3, 5, 7, 9), "depthwise kernel size (odd)"),
            "expansion": Knob("expansion", int, 2, (1, 2, 3, 4), "hidden width = expansion x dim"),
        },
        feasibility_fn=_feasibility,
        params_fn=_params,
        macs_fn=_macs,
        doc="ConvFormer SepConv: pointwise -> StarReLU -> depthwise kxk -> pointwise (O(N C^2)).",
    )
)
