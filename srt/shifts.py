"""Perturbation sets and exact integer translation.

A shift ``(dy, dx)`` moves image content down by ``dy`` and right by ``dx`` pixels (the convention of
torchvision's ``affine(translate=[dx, dy])`` used by the official code, PROTOCOLS.md 1.2). Pixels that
enter from outside are filled: ``zero`` (official: zero in normalised space, i.e. the mean colour),
``reflect`` or ``replicate``. No resampling: every shift is an exact integer translation.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .config import FILLS, SAMPLINGS, _check_choice
from .errors import UserError


@dataclass(frozen=True)
class ShiftSet:
    """An ordered set of integer shifts, one per forward pass.

    ``shifts`` is an int64 tensor [T, 2] of (dy, dx). ``level`` is the bound L on |dy| and |dx|.
    """

    shifts: torch.Tensor
    level: int
    description: str

    def __len__(self) -> int:
        return int(self.shifts.shape[0])

    def __iter__(self):
        return iter((int(dy), int(dx)) for dy, dx in self.shifts.tolist())

    @property
    def max_abs(self) -> int:
        return int(self.shifts.abs().max()) if len(self) else 0


def grid_shifts(level: int, step: int = 1) -> torch.Tensor:
    """All integer shifts with |dy|, |dx| <= L that are multiples of ``step``, row-major (dy outer).

    step 1: the (2L+1)^2 grid of the paper; step 2 over L=6: the 7x7 grid of the official visualisation
    notebook (-6, -4, ..., 6)."""
    reach = level // step * step
    r = torch.arange(-reach, reach + 1, step)
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([dy.reshape(-1), dx.reshape(-1)], dim=1)


def _stratified_indices(side: int, n: int, seed: int) -> np.ndarray:
    """n distinct cells of a side x side grid spread evenly: a scrambled Halton sequence snapped to the nearest
    free cell."""
    from scipy.stats import qmc

    points = qmc.Halton(d=2, scramble=True, seed=seed).random(n) * side  # in [0, side)^2
    centres = np.stack(np.meshgrid(np.arange(side), np.arange(side), indexing="ij"), -1).reshape(-1, 2) + 0.5
    free = np.ones(side * side, dtype=bool)
    chosen = []
    for p in points:
        d = ((centres - p) ** 2).sum(1)
        d[~free] = np.inf
        k = int(np.argmin(d))
        free[k] = False
        chosen.append(k)
    return np.array(chosen)


def make_shifts(
    level: int,
    samples: int | None = None,
    sampling: str = "random",
    seed: int = 0,
    official_parity: bool = False,
    patch_size: int | None = None,
    step: int = 1,
) -> ShiftSet:
    """The shift set of one SRT setting.

    - default: the exhaustive grid |dy|,|dx| <= L, (2L+1)^2 shifts (L=3: 49, as in the paper);
    - ``step=k``: only the multiples of k on that grid ((2 floor(L/k) + 1)^2 shifts);
    - ``samples=n``: n of those, ``sampling="random"`` (seeded, without replacement) or
      ``"stratified"`` (low-discrepancy, evenly spread over the grid);
    - ``official_parity``: prepend the extra unshifted pass the official code runs, so the original
      image is counted twice (50 passes at L=3; PROTOCOLS.md 1.2).
    """
    if level < 0:
        raise UserError(f"level={level} is not valid; expected an integer >= 0")
    if step < 1 or (level > 0 and step > level):
        raise UserError(f"step={step} is not valid at level={level}; expected 1 <= step <= level")
    if patch_size is not None:
        if level >= patch_size:
            raise UserError(
                f"level={level} is not valid for patch size {patch_size}; expected 0 <= level < {patch_size} "
                "(a shift of a whole token or more is no longer sub-token)"
            )
        if level > patch_size / 2:
            warnings.warn(
                f"level={level} exceeds half the patch size ({patch_size}/2): the paper bounds shifts by p/2; "
                "larger shifts revisit the same token offsets and lose more of the border",
                stacklevel=2,
            )
    _check_choice("sampling", sampling, SAMPLINGS)
    grid = grid_shifts(level, step)
    description = f"grid L={level}" + (f" step {step}" if step > 1 else "")
    if samples is not None:
        if not 1 <= samples <= len(grid):
            raise UserError(
                f"samples={samples} is not valid at level={level}"
                + (f", step={step}" if step > 1 else "")
                + f"; expected 1 <= samples <= {len(grid)}"
            )
        if sampling == "random":
            gen = torch.Generator().manual_seed(seed)
            idx = torch.randperm(len(grid), generator=gen)[:samples]
        else:
            idx = torch.from_numpy(_stratified_indices(2 * (level // step) + 1, samples, seed))
        grid = grid[idx]
        description = f"{sampling} {samples} of {description} (seed {seed})"
    if official_parity:
        grid = torch.cat([torch.zeros(1, 2, dtype=grid.dtype), grid])
        description += " + unshifted (official parity)"
    return ShiftSet(grid, level, description)


def pad_for_shifts(images: torch.Tensor, margin: int, fill: str) -> torch.Tensor:
    """Pad all four sides by ``margin`` once, so that every shift is a slice of the result."""
    _check_choice("fill", fill, FILLS)
    if margin == 0:
        return images
    mode = "constant" if fill == "zero" else fill
    if fill == "reflect" and margin >= min(images.shape[-2:]):
        raise UserError(
            f"fill=reflect needs images larger than the shift ({margin} px); got {tuple(images.shape[-2:])}"
        )
    return F.pad(images, (margin, margin, margin, margin), mode=mode)


def shift_padded(padded: torch.Tensor, margin: int, dy: int, dx: int, size: tuple[int, int]) -> torch.Tensor:
    """The image shifted by (dy, dx), cut from its padded copy: out[y, x] = image[y - dy, x - dx]."""
    h, w = size
    return padded[..., margin - dy : margin - dy + h, margin - dx : margin - dx + w]


def shift_image(images: torch.Tensor, dy: int, dx: int, fill: str = "zero") -> torch.Tensor:
    """Exact integer translation of [..., H, W] images with the given fill."""
    margin = max(abs(dy), abs(dx))
    return shift_padded(pad_for_shifts(images, margin, fill), margin, dy, dx, images.shape[-2:])


def _radical_inverse(i: int) -> float:
    """van der Corput radical inverse of ``i`` in base 2 (0, 1/2, 1/4, 3/4, ...): a 1-D low-discrepancy rank."""
    out, f = 0.0, 0.5
    while i:
        out, i, f = out + f * (i & 1), i >> 1, f / 2
    return out


def _lattice_generator(side: int) -> int:
    """The multiplier g of the rank-1 lattice i -> (i, g i mod side): the integer nearest side / golden ratio
    that is coprime with ``side`` (coprime: every block of the order is a permutation of the columns)."""
    target = side / ((1 + 5**0.5) / 2)
    candidates = [g for g in range(1, side) if np.gcd(g, side) == 1] or [0]
    return min(candidates, key=lambda g: (abs(g - target), g))


def balanced_order(level: int, step: int = 1) -> torch.Tensor:
    """A fixed low-discrepancy order of the ``grid_shifts(level, step)`` square (side S), as indices into it.

    The S^2 cells are split into S blocks, block k = {(i, (g i + k) mod S)}: each block holds every row and
    every column of the shift square once, so in any prefix of the order the counts per row (and per column)
    differ by at most one. Rows inside a block and the blocks themselves are visited in van der Corput order
    (base 2) around the centre, and g ~ S / golden ratio makes each block a well-spread lattice: every prefix
    covers the square evenly. The first pass is the unshifted image. Deterministic (no seed)."""
    side = 2 * (level // step) + 1
    c, g = side // 2, _lattice_generator(side)
    rows = sorted(range(side), key=lambda i: _radical_inverse((i - c) % side))
    first_block = (c - g * c) % side  # the block through the centre cell (c, c)
    blocks = sorted(range(side), key=lambda k: _radical_inverse((k - first_block) % side))
    order = [i * side + (g * i + k) % side for k in blocks for i in rows]
    return torch.tensor(order, dtype=torch.long)
