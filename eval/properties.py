"""Properties of a video object segmentation sequence, measured from its masks: pure functions, no I/O.

Used to ask *when* a feature method helps (scripts/evidence.py --set davis2016): per sequence, the gain against

- :func:`area_fraction`: the object's share of the frame;
- :func:`boundary_ratio`: the share of the object's pixels that lie on its boundary (an object pixel with a
  4-neighbour outside the object); a thin or ragged object has a high ratio, a compact blob a low one
  (an a x a square: (4a - 4) / a^2);
- :func:`motion`: mean frame-to-frame mask change, 1 - IoU of consecutive masks;
- :func:`cell_fractions` and :func:`dispersion_contrast`: a feature-dispersion map on a coarse grid (SRT's
  per-location variance across shifts) inside against outside the object.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _mask(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-d mask, got shape {m.shape}")
    return m.astype(bool)


def area_fraction(mask: np.ndarray) -> float:
    """Object pixels over all pixels."""
    m = _mask(mask)
    return float(m.mean())


def boundary_pixels(mask: np.ndarray) -> int:
    """Object pixels with at least one 4-neighbour outside the object (the frame edge counts as outside)."""
    m = np.pad(_mask(mask), 1, constant_values=False)
    inner = m[1:-1, 1:-1]
    interior = inner & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return int((inner & ~interior).sum())


def boundary_ratio(mask: np.ndarray) -> float:
    """Boundary pixels over object pixels; NaN for an empty mask."""
    m = _mask(mask)
    area = int(m.sum())
    return boundary_pixels(m) / area if area else float("nan")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two masks; 1 when both are empty."""
    a, b = _mask(a), _mask(b)
    union = int((a | b).sum())
    return float((a & b).sum() / union) if union else 1.0


def motion(masks: Sequence[np.ndarray]) -> float:
    """Mean of 1 - IoU over consecutive masks (0: the object does not move or change)."""
    if len(masks) < 2:
        raise ValueError("motion needs at least two masks")
    return float(np.mean([1.0 - iou(a, b) for a, b in zip(masks[:-1], masks[1:])]))


def cell_fractions(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """The object's share of each cell of an (h, w) grid laid over the mask (cell edges at round(i * H / h))."""
    m = _mask(mask).astype(np.float64)
    h, w = grid
    H, W = m.shape
    if not (1 <= h <= H and 1 <= w <= W):
        raise ValueError(f"grid {grid} does not fit a {H}x{W} mask")
    rows = np.round(np.arange(h + 1) * H / h).astype(int)
    cols = np.round(np.arange(w + 1) * W / w).astype(int)
    sums = np.add.reduceat(np.add.reduceat(m, rows[:-1], axis=0), cols[:-1], axis=1)
    counts = np.outer(np.diff(rows), np.diff(cols))
    return sums / counts


def dispersion_contrast(dispersion: np.ndarray, fractions: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Mean dispersion over cells inside the object (object share >= ``threshold``) and outside (< threshold),
    and their ratio inside / outside (NaN when a side has no cell)."""
    d, f = np.asarray(dispersion, dtype=np.float64), np.asarray(fractions, dtype=np.float64)
    if d.shape != f.shape:
        raise ValueError(f"dispersion {d.shape} and cell fractions {f.shape} differ in shape")
    inside, outside = f >= threshold, f < threshold
    d_in = float(d[inside].mean()) if inside.any() else float("nan")
    d_out = float(d[outside].mean()) if outside.any() else float("nan")
    ratio = d_in / d_out if outside.any() and inside.any() and d_out > 0 else float("nan")
    return {"inside": d_in, "outside": d_out, "ratio": ratio}
