"""Task-free fidelity of a fine feature field against features computed at a truly finer resolution.

For a fine field F ``[C, h, w]`` (a method's output at stride s) and a reference R of the same shape (the ViT run
on the image upsampled by p/s, whose token grid is exactly h x w), on the cells where both are defined:

- ``cosine``: mean over cells of cos(F(u, v), R(u, v)) -- does the method put the right feature in each cell;
- boundaries: the *edge map* of a field is, per cell, the mean dissimilarity 1 - cos to its 4-neighbours (those
  inside the grid); it is high where the field changes, i.e. at object boundaries as the field sees them.
  ``edge_corr``: Pearson correlation of the method's edge map with the reference's (are the boundaries in the
  right places); ``edge_ratio``: mean of the method's edge map / mean of the reference's (how sharp: 1 is as
  sharp as the finer-resolution features, below 1 blurrier, e.g. bilinear; nearest upsampling puts all the
  change on token borders, which ``edge_corr`` penalises).

Pure numpy/torch; ``python -m eval.fidelity FINE.npy REF.npy`` scores two saved ``[C, h, w]`` arrays.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from srt.errors import UserError, report_user_errors

EPS = 1e-12


def _check(fine: torch.Tensor, ref: torch.Tensor) -> None:
    if fine.dim() != 3 or ref.dim() != 3 or fine.shape != ref.shape:
        raise UserError(
            f"fidelity needs two [C, h, w] fields of the same shape; got {tuple(fine.shape)} and {tuple(ref.shape)}"
        )
    if min(fine.shape[1:]) < 2:
        raise UserError(f"fidelity needs grids of at least 2 x 2 cells; got {tuple(fine.shape[1:])}")


def cosine_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-cell cosine similarity of two [C, h, w] fields -> [h, w]."""
    return F.cosine_similarity(a.double(), b.double(), dim=0, eps=EPS)


def edge_map(field: torch.Tensor) -> torch.Tensor:
    """Per-cell mean of 1 - cos to the 4-neighbours (those inside the grid) of a [C, h, w] field -> [h, w]."""
    f = field.double()
    right = 1 - F.cosine_similarity(f[:, :, :-1], f[:, :, 1:], dim=0, eps=EPS)  # pairs (u, v)-(u, v+1): [h, w-1]
    down = 1 - F.cosine_similarity(f[:, :-1, :], f[:, 1:, :], dim=0, eps=EPS)  # pairs (u, v)-(u+1, v): [h-1, w]
    # every pair counts for both of its cells
    total = F.pad(right, (0, 1)) + F.pad(right, (1, 0)) + F.pad(down, (0, 0, 0, 1)) + F.pad(down, (0, 0, 1, 0))
    ones_r, ones_d = torch.ones_like(right), torch.ones_like(down)
    count = F.pad(ones_r, (0, 1)) + F.pad(ones_r, (1, 0)) + F.pad(ones_d, (0, 0, 0, 1)) + F.pad(ones_d, (0, 0, 1, 0))
    return total / count


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    denom = float(a.norm() * b.norm())
    return float((a * b).sum()) / denom if denom > 0 else float("nan")


def fidelity_scores(fine: torch.Tensor | np.ndarray, ref: torch.Tensor | np.ndarray) -> dict[str, float]:
    """``cosine``, ``edge_corr``, ``edge_ratio`` of a fine field against the reference (module docstring)."""
    fine, ref = torch.as_tensor(np.asarray(fine)), torch.as_tensor(np.asarray(ref))
    _check(fine, ref)
    e_fine, e_ref = edge_map(fine), edge_map(ref)
    ref_mean = float(e_ref.mean())
    return {
        "cosine": float(cosine_map(fine, ref).mean()),
        "edge_corr": pearson(e_fine, e_ref),
        "edge_ratio": float(e_fine.mean()) / ref_mean if ref_mean > 0 else float("nan"),
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Fidelity of a fine feature field [C,h,w] against a reference.")
    parser.add_argument("fine", help=".npy file holding the method's field [C, h, w]")
    parser.add_argument("reference", help=".npy file holding the finer-resolution reference [C, h, w]")
    args = parser.parse_args(argv)
    fields = []
    for path in (args.fine, args.reference):
        try:
            fields.append(np.load(path, allow_pickle=False))
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {path} as a .npy array: {e}") from e
    print(json.dumps(fidelity_scores(*fields)))
    return 0


if __name__ == "__main__":
    sys.exit(report_user_errors(main, prog="python -m eval.fidelity"))
