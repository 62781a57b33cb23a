"""The naive SRT route, pass by pass at full resolution (the official ``EnsembledExtractor``, PROTOCOLS.md 1.4).

Kept as a readable reference and as the baseline of ``scripts/bench_srt.py``: every pass is upsampled
to pixel resolution, shifted back and added into a full-resolution buffer, which is pooled at the end.
Cost O(T C H W) time and O(C H W) memory per image, against O(T C h w) for :class:`StochasticResonance`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .shifts import ShiftSet, shift_image


@torch.no_grad()
def naive_srt(
    backbone,
    images: torch.Tensor,
    shift_set: ShiftSet,
    stride: int,
    name: str = "tokens",
    fill: str = "zero",
    batch_size: int = 32,
) -> torch.Tensor:
    """Mean over passes of the nearest-upsampled, un-shifted grids, average-pooled to ``stride`` (official border)."""
    p = backbone.patch_size
    total = None
    shifts = list(shift_set)
    for start in range(0, len(shifts), batch_size):
        chunk = shifts[start : start + batch_size]
        batch = torch.cat([shift_image(images, dy, dx, fill) for dy, dx in chunk])
        tokens = backbone(batch)[name].float().split(images.shape[0])
        for (dy, dx), tok in zip(chunk, tokens):
            up = tok.repeat_interleave(p, dim=-2).repeat_interleave(p, dim=-1)
            aligned = shift_image(up, -dy, -dx, "zero")  # zero where the shifted image had no content
            total = aligned if total is None else total.add_(aligned)
    field = total / len(shifts)
    return F.avg_pool2d(field, stride) if stride > 1 else field
