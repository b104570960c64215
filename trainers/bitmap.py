"""Which validation examples an evaluation got right, kept compactly, and which validation set that was.

An evaluation's per-example correctness is what makes two accuracies comparable *paired* (McNemar, paired bootstrap:
see :mod:`nas.evaluation`): two architectures evaluated on the same images differ by the examples one gets right
and the other does not, a far smaller noise than two independent binomial errors. A bitmap of ``n`` examples is
stored as the text ``"<n>:<base64 of numpy.packbits (big-endian bit order)>"`` — 3,000 examples take 504
characters — so it fits a trial's JSON user attributes. The validation set is named by :func:`fingerprint`, a
hash of its images and labels: two bitmaps are comparable only under the same fingerprint.
"""

from __future__ import annotations

import base64
import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

FINGERPRINT_CHARS = 16


def pack(correct: Any) -> str:
    """The text form of a 1-D boolean vector (a tensor or array: example ``i`` right or not, in the validation set's
    order)."""
    if hasattr(correct, "detach"):  # a torch tensor (numpy-only readers never import torch here)
        correct = correct.detach().cpu().numpy()
    bits = np.asarray(correct).astype(bool).reshape(-1)
    return f"{bits.size}:{base64.b64encode(np.packbits(bits).tobytes()).decode('ascii')}"


def unpack(text: str) -> np.ndarray:
    """The boolean vector :func:`pack` stored.

    Raises:
        ValueError: ``text`` is not ``"<n>:<base64>"`` of at least ``ceil(n / 8)`` bytes.
    """
    head, sep, body = text.partition(":")
    if not sep or not head.isdigit():
        raise ValueError(f"not a correctness bitmap ('<n>:<base64>'): {text[:40]!r}")
    n = int(head)
    raw = np.frombuffer(base64.b64decode(body.encode("ascii"), validate=True), dtype=np.uint8)
    if raw.size * 8 < n:
        raise ValueError(f"correctness bitmap of {n} examples holds only {raw.size * 8} bits")
    return np.unpackbits(raw, count=n).astype(bool)


def count(text: str) -> tuple[int, int]:
    """(examples right, examples) of a stored bitmap."""
    bits = unpack(text)
    return int(bits.sum()), int(bits.size)


def fingerprint(images: Tensor, labels: Tensor) -> str:
    """A short hash naming a validation set (its images' bytes, shape and dtype, and its labels, in order)."""
    import torch

    h = hashlib.sha256()
    for t in (images, labels):
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:FINGERPRINT_CHARS]
