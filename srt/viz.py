"""PCA of a feature field to RGB, the way SRT's figures show features (PROTOCOLS.md 1.2)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .io import atomic_save_png


def pca_rgb(features: torch.Tensor, quantile: float = 0.01, basis: torch.Tensor | None = None) -> np.ndarray:
    """Top-3 principal components of a [C,H,W] field as a uint8 [H,W,3] image.

    Each component is min-max scaled robustly (between its ``quantile`` and ``1 - quantile`` values) so a
    few outlier tokens do not wash out the picture. ``basis`` ([C,3]) projects several fields onto the same
    components (e.g. a plain and an SRT field of one image, for a fair side-by-side).
    """
    if features.dim() != 3:
        raise UserError(f"features must be [C,H,W]; got shape {tuple(features.shape)}")
    C, H, W = features.shape
    x = features.detach().float().reshape(C, -1).T  # [HW, C]
    x = x - x.mean(0, keepdim=True)
    if basis is None:
        basis = pca_basis(features)
    proj = x @ basis[:, : min(3, basis.shape[1])]
    if proj.shape[1] < 3:  # fewer than 3 channels: pad with zeros
        proj = torch.cat([proj, proj.new_zeros(proj.shape[0], 3 - proj.shape[1])], dim=1)
    lo = torch.quantile(proj, quantile, dim=0)
    hi = torch.quantile(proj, 1 - quantile, dim=0)
    rgb = ((proj - lo) / (hi - lo).clamp(min=1e-8)).clamp(0, 1)
    return (rgb.reshape(H, W, 3).cpu().numpy() * 255).round().astype(np.uint8)


def pca_basis(features: torch.Tensor, components: int = 3) -> torch.Tensor:
    """[C, k] principal directions of a [C,H,W] field (sign fixed so results are deterministic)."""
    C = features.shape[0]
    x = features.detach().float().reshape(C, -1).T
    x = x - x.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    basis = v[: min(components, C)].T
    signs = torch.sign(basis[basis.abs().argmax(0), torch.arange(basis.shape[1])])
    return basis * signs


def save_pca_png(features: torch.Tensor, path: str | os.PathLike, **kwargs) -> Path:
    """Write :func:`pca_rgb` of a [C,H,W] field as a PNG (atomically) and return the path."""
    return atomic_save_png(path, pca_rgb(features, **kwargs))
