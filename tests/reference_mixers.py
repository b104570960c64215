"""Plain reference implementations of the six token mixers, written from shared/specs/mixers.md §1-§6.

Each ``<mixer>_ref(x, p, knobs, grid)`` is a pure function of a channels-last input ``[B, h, w, C]``, a dict of
weight tensors ``p`` and the mixer's resolved knobs. The *keys* of ``p`` are the parameter names of the
corresponding ``nas.mixers`` module (``dict(module.named_parameters())``) so tests and the benchmark can share
weights and compare gradients name by name; nothing else here depends on ``nas``: every function spells the
spec's equations out the plain way (explicit logits, explicit softmax, one chart at a time, no algebraic
shortcuts, no fused kernels).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

Params = Mapping[str, torch.Tensor]
Knobs = Mapping[str, Any]


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    y = x @ w.t()
    return y if b is None else y + b


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, N, C] -> [B, H, N, C/H] with channel = head * d + j."""
    b, n, c = t.shape
    return t.reshape(b, n, heads, c // heads).permute(0, 2, 1, 3)


def _merge_heads(t: torch.Tensor) -> torch.Tensor:
    b, hh, n, d = t.shape
    return t.permute(0, 2, 1, 3).reshape(b, n, hh * d)


def _attend(logits: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, dim=-1) @ v


def resize_r1(t: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """Spec R1: ``[G, h0*w0, F]`` viewed as a ``G*F``-channel image on ``src``, bicubic to ``dst``."""
    if tuple(src) == tuple(dst):
        return t
    g, _, f = t.shape
    img = t.permute(0, 2, 1).reshape(1, g * f, src[0], src[1])
    aa = dst[0] < src[0] or dst[1] < src[1]
    img = F.interpolate(img, size=tuple(dst), mode="bicubic", align_corners=False, antialias=aa)
    return img.reshape(g, f, dst[0] * dst[1]).permute(0, 2, 1)


# §1 ConvFormer SepConv: y = W2 . DWConv_k(StarReLU(W1 . x))
def dwconv_ref(x: torch.Tensor, p: Params, knobs: Knobs, grid: tuple[int, int]) -> torch.Tensor:
    z = _linear(x, p["pwconv1.weight"])
    z = p["act1.scale"] * torch.relu(z) ** 2 + p["act1.bias"]
    k = knobs["kernel_size"]
    z = F.conv2d(z.permute(0, 3, 1, 2), p["dwconv.weight"], padding=k // 2, groups=z.shape[-1])
    return _linear(z.permute(0, 2, 3, 1), p["pwconv2.weight"])


# §2 MHSA: softmax(Q K^T / sqrt(d)) V, then W_O
def mhsa_ref(x: torch.Tensor, p: Params, knobs: Knobs, grid: tuple[int, int]) -> torch.Tensor:
    b, h, w, c = x.shape
    hh, d = c // knobs["head_dim"], knobs["head_dim"]
    qkv = _linear(x.reshape(b, h * w, c), p["qkv.weight"], p.get("qkv.bias"))
    q, k, v = (_split_heads(t, hh) for t in qkv.split(c, dim=-1))
    o = _attend(q @ k.transpose(-1, -2) * d**-0.5, v)
    return _linear(_merge_heads(o), p["proj.weight"]).reshape(b, h, w, c)


# §3 SKA: A_h = Q_h W_{K,h}^T (static key), softmax, V_h, W_O
def ska_ref(x: torch.Tensor, p: Params, knobs: Knobs, grid: tuple[int, int]) -> torch.Tensor:
    b, h, w, c = x.shape
    hh, d = c // knobs["head_dim"], knobs["head_dim"]
    t = x.reshape(b, h * w, c)
    paper = knobs["q_proj"] == "paper"
    q = _linear(t, p["q.weight"], p["q.bias"]) if paper else t
    v = _linear(t, p["v.weight"], p["v.bias"] if paper else None)
    key = resize_r1(p["key"], grid, (h, w))  # [H, N, d]
    scale = {"inv_sqrt_d": d**-0.5, "none": 1.0}.get(knobs["scale"])
    if scale is None:
        scale = torch.exp(p["log_scale"])
    logits = torch.einsum("bhnd,hmd->bhnm", _split_heads(q, hh), key) * scale
    o = _merge_heads(_attend(logits, _split_heads(v, hh)))
    return _linear(o, p["proj.weight"], p["proj.bias"] if paper else None).reshape(b, h, w, c)


def cska_logits_ref(q: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, heads: int) -> torch.Tensor:
    """§4 ``A_h = GroupedConv(Q, h)``: the conv output channel ``head*N + key`` at position ``query``.

    ``q`` is ``[B, h, w, C]``; returns unscaled logits ``[B, H, N_query, N_key]``.
    """
    b, h, w, _ = q.shape
    k = weight.shape[-1]
    out = F.conv2d(q.permute(0, 3, 1, 2), weight, bias, padding=k // 2, groups=heads)  # [B, H*N, h, w]
    return out.reshape(b, heads, -1, h * w).transpose(-1, -2)


def cska_ref(x: torch.Tensor, p: Params, knobs: Knobs, grid: tuple[int, int]) -> torch.Tensor:
    b, h, w, c = x.shape
    hh, n, n0 = knobs["heads"], h * w, grid[0] * grid[1]
    d = c // hh
    q, v = _linear(x.reshape(b, n, c), p["qv.weight"]).split(c, dim=-1)
    weight, bias = p["logit_conv.weight"], p["logit_conv.bias"]
    # the conv's output channels index keys: resample that axis to the call's grid (R1)
    weight = resize_r1(weight.reshape(hh, n0, -1), grid, (h, w)).reshape(hh * n, *weight.shape[1:])
    bias = resize_r1(bias.reshape(hh, n0, 1), grid, (h, w)).reshape(hh * n)
    logits = cska_logits_ref(q.reshape(b, h, w, c), weight, bias, hh)
    if knobs["scaled"]:
        logits = logits * d**-0.5
    o = _merge_heads(_attend(logits, _split_heads(v, hh)))
    return _linear(o, p["proj.weight"]).reshape(b, h, w, c)


# §5 manifold key [CHOICE]: charts Z_m = X*s_m, per-chart MLP, aggregation, attention
def manifold_key_ref(x: torch.Tensor, p: Params, knobs: Knobs, grid: tuple[int, int]) -> torch.Tensor:
    b, h, w, c = x.shape
    hh, d, m_charts, agg = c // knobs["head_dim"], knobs["head_dim"], knobs["charts"], knobs["aggregation"]
    t = x.reshape(b, h * w, c)
    charts = []
    for m in range(m_charts):
        u = (t * p["chart_scale"][m]) @ p["chart_layers.0"][m]  # stored [chart, in, out]
        for layer in range(1, knobs["layers"]):
            u = F.gelu(u) @ p[f"chart_layers.{layer}"][m]
        charts.append(u)  # [B, N, C]
    if agg == "linear":
        key = _linear(torch.cat(charts, dim=-1), p["fuse.weight"])
    elif agg == "gated":
        scores = torch.stack([_linear(u.mean(dim=1), p["fuse.weight"])[:, 0] for u in charts], dim=1)  # [B, M]
        weights = torch.softmax(scores, dim=1)
        key = sum(weights[:, m, None, None] * charts[m] for m in range(m_charts))
    else:
        key = sum(charts) / m_charts
        if agg == "spatial":
            kmap = key.reshape(b, h, w, c).permute(0, 3, 1, 2)
            key = F.conv2d(kmap, p["fuse.weight"], padding=1, groups=c).permute(0, 2, 3, 1).reshape(b, h * w, c)
    q, v = _linear(t, p["qv.weight"]).split(c, dim=-1)
    logits = _split_heads(q, hh) @ _split_heads(key, hh).transpose(-1, -2) * d**-0.5
    o = _attend(logits, _split_heads(v, hh))
    if knobs["context_broadcast"]:
        o = 0.5 * o + 0.5 * o.mean(dim=2, keepdim=True)  # uniform attention added to every token
    return _linear(_merge_heads(o), p["proj.weight"]).reshape(b, h, w, c)


# §6 key-only [CHOICE]: a = softmax_n(w_h . k_n / sqrt(d)), g_h = sum_n a_n v_n, broadcast or query-gated
def key_only_ref(x: torch.Tensor, p: Params, knobs: Knobs, grid: tuple[int, int]) -> torch.Tensor:
    b, h, w, c = x.shape
    hh = knobs["heads"]
    d = c // hh
    t = x.reshape(b, h * w, c)
    k = _split_heads(_linear(t, p["k.weight"]), hh)  # [B, H, N, d]
    v = _split_heads(_linear(t, p["v.weight"]), hh)
    s = (k * p["gate"][None, :, None, :]).sum(dim=-1) / d**0.5  # [B, H, N]
    a = torch.softmax(s, dim=-1)
    g = (a.unsqueeze(-1) * v).sum(dim=2)  # [B, H, d]
    if knobs["mode"] == "broadcast":
        y = _linear(g.reshape(b, 1, c), p["proj.weight"]).expand(b, h * w, c)
    else:
        q = _split_heads(_linear(t, p["q.weight"]), hh)
        y = _linear(_merge_heads(q * g.unsqueeze(2)), p["proj.weight"])
    return y.reshape(b, h, w, c)


REFERENCES: dict[str, Callable[[torch.Tensor, Params, Knobs, tuple[int, int]], torch.Tensor]] = {
    "dwconv": dwconv_ref,
    "mhsa": mhsa_ref,
    "ska": ska_ref,
    "cska": cska_ref,
    "manifold_key": manifold_key_ref,
    "key_only": key_only_ref,
}


def leaf_copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of a module's parameters (requiring grad) keyed by the module's parameter names."""
    return {k: v.detach().clone().requires_grad_(True) for k, v in module.named_parameters()}
