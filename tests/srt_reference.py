"""Independent brute-force SRT, written from the paper's description (PROTOCOLS.md 1.4), for the tests.

No code is shared with srt.aggregate: shifts are done by explicit zero-filled slicing, the upsampling by
``repeat_interleave``, and the aligned fields are stacked in memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def translate(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """out[y, x] = images[y - dy, x - dx], zero outside."""
    out = torch.zeros_like(images)
    H, W = images.shape[-2:]
    ys, yd = (slice(0, H - dy), slice(dy, H)) if dy >= 0 else (slice(-dy, H), slice(0, H + dy))
    xs, xd = (slice(0, W - dx), slice(dx, W)) if dx >= 0 else (slice(-dx, W), slice(0, W + dx))
    out[..., yd, xd] = images[..., ys, xs]
    return out


def aligned_stack(tokens_per_pass: list[torch.Tensor], shifts: list[tuple[int, int]], patch: int):
    """Stack of aligned full-resolution fields [T,B,C,H,W] and their coverage masks [T,1,1,H,W]."""
    fields, masks = [], []
    for tok, (dy, dx) in zip(tokens_per_pass, shifts):
        up = tok.repeat_interleave(patch, dim=-2).repeat_interleave(patch, dim=-1)
        fields.append(translate(up, -dy, -dx))  # undo: field[y] = up[y + dy]
        ones = torch.ones(1, 1, *up.shape[-2:], dtype=up.dtype)
        masks.append(translate(ones, -dy, -dx))
    return torch.stack(fields), torch.stack(masks)


def pass_outputs(backbone, images: torch.Tensor, shifts: list[tuple[int, int]]) -> list[dict]:
    """The backbone's outputs on every translated copy of the images, one dict per shift."""
    return [backbone(translate(images, dy, dx)) for dy, dx in shifts]


def mean_field(
    per_pass: list[dict], shifts: list[tuple[int, int]], patch: int, name: str = "tokens", border: str = "official"
) -> torch.Tensor:
    """The stride-1 SRT mean field [B,C,H,W] of output ``name``, summed pass by pass."""
    total, count = None, None
    for out, (dy, dx) in zip(per_pass, shifts):
        up = out[name].repeat_interleave(patch, dim=-2).repeat_interleave(patch, dim=-1)
        field = translate(up, -dy, -dx)  # undo: field[y] = up[y + dy]
        mask = translate(torch.ones(1, 1, *up.shape[-2:], dtype=up.dtype), -dy, -dx)
        total = field if total is None else total + field
        count = mask if count is None else count + mask
    if border == "official":
        return total / len(shifts)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def brute_force(
    backbone, images: torch.Tensor, shifts: list[tuple[int, int]], name: str = "tokens", border: str = "official"
) -> torch.Tensor:
    """The stride-1 SRT mean field [B,C,H,W] of output ``name``."""
    return mean_field(pass_outputs(backbone, images, shifts), shifts, backbone.patch_size, name, border)


def pool(field: torch.Tensor, stride: int) -> torch.Tensor:
    return F.avg_pool2d(field, stride) if stride > 1 else field
