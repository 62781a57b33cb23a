"""Streaming aggregation of shifted token grids into aligned feature fields.

Geometry. Pass t ran the ViT on the image shifted by (dy, dx) and returned a token grid F_t [C,h,w].
Nearest-upsampled by p and shifted back, it is the field U_t(y, x) = F_t(floor((y+dy)/p), floor((x+dx)/p)),
zero where (y+dy, x+dx) falls outside the image (PROTOCOLS.md 1.4). SRT's output at stride s (s divides
p) is the s x s box filter of the per-pixel mean of these fields:

    out_s(u, v) = (1/s^2) * sum_{(y,x) in cell(u,v)} w(y,x) * sum_t U_t(y, x)

with w = 1/T (border "official": zero-filled strips count) or w = 1/N(y,x), N = number of passes whose
shifted image covered (y, x) (border "normalized"). Stride p is the pooled output (the drop-in
replacement), stride 1 the dense field. Every s x s cell reads at most 2 x 2 tokens of a pass, with
weights given by rectangle areas ("taps").

Two exact engines compute the mean:

- :class:`PhaseMean` (uniform w). The weights of a pass do not depend on the token, only on the cell's
  phase inside its token (P = p/s phases per axis). Along each phase axis they are piecewise constant with
  one step, so we store their *differences* over the phases: a pass adds <= 16 token-grid sized terms
  into a [C, h, P, w, P] buffer (the output's own layout); one in-place cumulative sum over the phases at
  the end turns it into the field. Cost per pass O(C h w), independent of the output resolution; memory
  one output-sized buffer.
- :class:`TapMean` (any w). Gathers the <= 4 taps of every output cell with weights from an integral
  image of w. Cost per pass O(C H/s W/s). Used for the normalized border at strides 1 < s <= p.

:class:`Welford` (weighted streaming variance) and :class:`MedianBuffer` (bounded buffer of all passes)
work on each pass's aligned map at the output stride, computed with the same taps.
"""

from __future__ import annotations

import functools
import math

import torch

from .errors import BudgetError

# ----------------------------------------------------------------------------------------------
# Geometry


def axis_overlaps(n_cells: int, stride: int, patch: int, shift: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """For output cells u (original pixels [u*s, u*s+s)), after undoing a content shift ``shift``:
    the first token the cell reads and how many of its s pixels come from it (the rest come from the next token)."""
    start = torch.arange(n_cells, device=device) * stride + shift
    first = torch.div(start, patch, rounding_mode="floor")
    overlap_first = torch.clamp((first + 1) * patch - start, max=stride)
    return first, overlap_first


def coverage_weights(shifts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """w(y, x) = 1/N(y, x) for the normalized border: N counts the passes whose shifted image covers (y, x).

    Locations no pass covers get weight 0 (they stay 0 in the output)."""
    H, W = size
    dy, dx = shifts[:, :1], shifts[:, 1:]
    ys, xs = torch.arange(H), torch.arange(W)
    vy = ((ys + dy >= 0) & (ys + dy < H)).double()  # [T, H]
    vx = ((xs + dx >= 0) & (xs + dx < W)).double()  # [T, W]
    n = vy.T @ vx
    return torch.where(n > 0, 1.0 / n.clamp(min=1), torch.zeros_like(n))


class Taps:
    """The <= 4 taps of one pass at one output stride: token indices per axis and per-cell weights.

    ``weight_image`` None gives area weights (fraction of each cell read from each valid token); otherwise
    each tap weighs the sum of ``weight_image`` over the pixels it covers, divided by s^2.
    """

    def __init__(
        self,
        shift: tuple[int, int],
        grid: tuple[int, int],
        patch: int,
        stride: int,
        integral: torch.Tensor | None = None,
        device=None,
    ):
        h, w = grid
        n_y, n_x = h * patch // stride, w * patch // stride
        fy, oy = axis_overlaps(n_y, stride, patch, shift[0], device)
        fx, ox = axis_overlaps(n_x, stride, patch, shift[1], device)
        self.items: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        ay = [(fy, oy, torch.zeros_like(oy)), (fy + 1, stride - oy, oy)]  # (token, pixels, offset in cell)
        ax = [(fx, ox, torch.zeros_like(ox)), (fx + 1, stride - ox, ox)]
        for ty, ny, sy in ay:
            valid_y = (ty >= 0) & (ty < h) & (ny > 0)
            if not bool(valid_y.any()):
                continue
            for tx, nx, sx in ax:
                valid_x = (tx >= 0) & (tx < w) & (nx > 0)
                if not bool(valid_x.any()):
                    continue
                if integral is None:
                    weight = (ny * valid_y).double()[:, None] * (nx * valid_x).double()[None, :]
                else:
                    y0 = torch.arange(n_y, device=device) * stride + sy
                    x0 = torch.arange(n_x, device=device) * stride + sx
                    y1, x1 = y0 + ny, x0 + nx
                    rect = integral[y1][:, x1] - integral[y0][:, x1] - integral[y1][:, x0] + integral[y0][:, x0]
                    weight = rect * (valid_y[:, None] & valid_x[None, :])
                weight = (weight / stride**2).float()
                self.items.append((ty.clamp(0, h - 1), tx.clamp(0, w - 1), weight))

    def apply(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of weighted taps [B,C,Hs,Ws], sum of tap weights [Hs,Ws]) for token grids [B,C,h,w]."""
        out, total = None, None
        for iy, ix, weight in self.items:
            g = gather_cells(tokens, iy, ix)
            out = g.mul_(weight) if out is None else out.addcmul_(g, weight)
            total = weight if total is None else total + weight
        return out, total


def gather_cells(tokens: torch.Tensor, iy: torch.Tensor, ix: torch.Tensor) -> torch.Tensor:
    """``tokens[:, :, iy][:, :, :, ix]`` for grids [B,C,h,w]. The column gather runs on a 2-D view: on CPU,
    ``index_select`` along the last axis of a 4-D tensor is about 7x slower (measured at 384x336x336), and at
    stride 1 this gather was most of the cost of the dispersion and normalized-border paths."""
    rows = tokens.index_select(2, iy)
    B, C, H, w = rows.shape
    return rows.reshape(B * C * H, w).index_select(1, ix).view(B, C, H, ix.numel())


def integral_image(weights: torch.Tensor) -> torch.Tensor:
    """Zero-padded 2-D cumulative sum: rect sums in O(1)."""
    ii = torch.zeros(weights.shape[0] + 1, weights.shape[1] + 1, dtype=torch.float64, device=weights.device)
    ii[1:, 1:] = weights.double().cumsum(0).cumsum(1)
    return ii


@functools.lru_cache(maxsize=4096)
def phase_differences(stride: int, patch: int, shift: int) -> tuple[tuple[int, int, float], ...]:
    """Nonzero (token offset, phase, weight difference) for one axis of :class:`PhaseMean`.

    The weight of token offset a at phase q (cells q*s.. inside any token) is the fraction of the cell that
    reads token R+a; we return its forward differences over q, so a cumulative sum over q restores it."""
    phases = patch // stride
    first, overlap = axis_overlaps(phases, stride, patch, shift)
    table: dict[int, list[float]] = {}
    for q in range(phases):
        a, n = int(first[q]), int(overlap[q])
        for offset, pixels in ((a, n), (a + 1, stride - n)):
            if pixels:
                table.setdefault(offset, [0.0] * phases)[q] += pixels / stride
    out = []
    for offset, w in table.items():
        prev = 0.0
        for q in range(phases):
            if w[q] != prev:
                out.append((offset, q, w[q] - prev))
            prev = w[q]
    return tuple(out)


# ----------------------------------------------------------------------------------------------
# Accumulators


class PhaseMean:
    """Exact mean with uniform pixel weight ``scale`` (1/T), at stride s, in O(C h w) per pass."""

    def __init__(
        self,
        batch: int,
        channels: int,
        grid: tuple[int, int],
        patch: int,
        stride: int,
        scale: float,
        device=None,
        dtype=torch.float32,
    ):
        self.grid, self.patch, self.stride, self.scale = grid, patch, stride, scale
        self.phases = patch // stride
        P, (h, w) = self.phases, grid
        # laid out as the output ([.., h, P, w, P] is [.., H/s, W/s] viewed by token and phase), so the result
        # is a view of the buffer: no copy, one output-sized allocation in all
        self.buffer = torch.zeros(batch, channels, h, P, w, P, device=device, dtype=dtype)
        self._cache: dict[tuple[int, int], tuple[list, int]] = {}  # shift -> ([(a, qy, b, qx, coef)], margin)

    def _terms(self, shift: tuple[int, int]) -> tuple[list[tuple[int, int, int, int, float]], int]:
        """The pass's (token offset y, phase y, token offset x, phase x, weight) terms, and the zero margin in
        tokens they need (1 while |shift| <= cell size; more for finer outputs such as a stride-1 map)."""
        if shift not in self._cache:
            ys = phase_differences(self.stride, self.patch, shift[0])
            xs = phase_differences(self.stride, self.patch, shift[1])
            terms = [(a, qy, b, qx, wy * wx) for a, qy, wy in ys for b, qx, wx in xs]
            margin = max((max(abs(a), abs(b)) for a, _, b, _, _ in terms), default=0)
            self._cache[shift] = (terms, margin)
        return self._cache[shift]

    def add(self, tokens: torch.Tensor, shift: tuple[int, int], images: slice) -> None:
        """Add the pass with ``shift`` for the images ``images`` (token grids [n,C,h,w])."""
        h, w = self.grid
        terms, m = self._terms(shift)
        padded = torch.nn.functional.pad(tokens, (m, m, m, m)) if m else tokens  # zero tokens all round: the fill
        for a, qy, b, qx, coef in terms:
            self.buffer[images, :, :, qy, :, qx].add_(padded[:, :, m + a : m + a + h, m + b : m + b + w], alpha=coef)

    def result(self, scale: float | torch.Tensor | None = None) -> torch.Tensor:
        """The field, times ``scale`` (default: the constructor's; a 1-D tensor: one factor per image)."""
        B, C, h, P, w, _ = self.buffer.shape
        scale = self.scale if scale is None else scale
        if isinstance(scale, torch.Tensor):
            scale = scale.to(self.buffer).view(B, 1, 1, 1, 1, 1)
        field = self.buffer.cumsum_(3).cumsum_(5).mul_(scale)  # in place
        self.buffer = None  # consumed
        return field.view(B, C, h * P, w * P)


class TapMean:
    """Exact mean with any pixel weight image (the normalized border), at stride s, O(C H/s W/s) per pass."""

    def __init__(
        self,
        batch: int,
        channels: int,
        grid: tuple[int, int],
        patch: int,
        stride: int,
        pixel_weights: torch.Tensor,
        device=None,
        dtype=torch.float32,
    ):
        self.grid, self.patch, self.stride = grid, patch, stride
        self.integral = integral_image(pixel_weights.to(device))
        h, w = grid
        self.buffer = torch.zeros(batch, channels, h * patch // stride, w * patch // stride, device=device, dtype=dtype)
        self._cache: dict[tuple[int, int], Taps] = {}

    def add(self, tokens: torch.Tensor, shift: tuple[int, int], images: slice) -> None:
        if shift not in self._cache:
            self._cache[shift] = Taps(shift, self.grid, self.patch, self.stride, self.integral, tokens.device)
        contribution, _ = self._cache[shift].apply(tokens)
        if contribution is not None:
            self.buffer[images] += contribution

    def result(self) -> torch.Tensor:
        return self.buffer


class AlignedPasses:
    """Each pass's own aligned map at stride s (area taps), for statistics beyond the mean.

    ``normalized``: a cell's value averages only the pixels the pass covered, and the pass weighs by that
    coverage fraction (uncovered -> weight 0); otherwise zero-filled pixels count and every pass weighs 1.
    """

    def __init__(self, grid: tuple[int, int], patch: int, stride: int, normalized: bool):
        self.grid, self.patch, self.stride, self.normalized = grid, patch, stride, normalized
        self._cache: dict[tuple[int, int], Taps] = {}

    def __call__(self, tokens: torch.Tensor, shift: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        if shift not in self._cache:
            self._cache[shift] = Taps(shift, self.grid, self.patch, self.stride, None, tokens.device)
        value, coverage = self._cache[shift].apply(tokens)
        if value is None:  # the pass covers no output cell at all
            h, w = self.grid
            shape = (h * self.patch // self.stride, w * self.patch // self.stride)
            return torch.zeros(*tokens.shape[:2], *shape, device=tokens.device), torch.zeros(
                shape, device=tokens.device
            )
        if not self.normalized:
            return value, torch.ones_like(coverage)
        return value.div_(coverage.clamp(min=1e-12)), coverage


class Welford:
    """Weighted streaming mean and variance (West, 1979): one pass, numerically stable, O(output) memory.

    Weights are per location (coverage), shared by all channels; each image keeps its own running total
    because chunks of (image, shift) pairs reach the images at different times."""

    def __init__(self, shape: tuple[int, int, int, int], device=None):
        B, C, Hs, Ws = shape
        self.total = torch.zeros(B, 1, Hs, Ws, device=device)
        self.mean = torch.zeros(shape, device=device)
        self.m2 = torch.zeros(shape, device=device)

    def add(self, value: torch.Tensor, weight: torch.Tensor, images: slice) -> None:
        """Fold in one pass; ``value`` is consumed (overwritten), so the update needs one output-sized temporary."""
        total = self.total[images] + weight
        ratio = torch.where(total > 0, weight / total.clamp(min=1e-12), torch.zeros_like(total))
        mean = self.mean[images]  # views: the updates below write into the buffers
        delta = value - mean
        mean.addcmul_(ratio, delta)
        self.m2[images].addcmul_(delta.mul_(value.sub_(mean)), weight)  # += weight * delta * (value - new mean)
        self.total[images] = total

    def variance(self) -> torch.Tensor:
        """Population variance over passes (weighted); 0 where no pass covered the location (m2 stayed 0 there).
        Computed in place in the m2 buffer (no output-sized temporaries): call it once, after the last pass."""
        return self.m2.div_(self.total.clamp(min=1e-12))


def relative_standard_error(
    welford: Welford, images: torch.Tensor, passes: int, population: int, norm: str = "grid"
) -> torch.Tensor:
    """Estimated standard error of each image's running mean relative to the mean, after ``passes`` of a
    ``population`` of passes taken without replacement (one value per image of ``images``, an index tensor).

    Per element, the sample variance over passes is s^2 = m2 / (n - 1) (Welford's sum of squared deviations,
    unit weights) and the standard error of the mean of n of N passes drawn without replacement is
    SE^2 = s^2 / n * (N - n) / N (finite-population correction: 0 once every pass is in).
    ``norm="grid"``: ||SE||_2 / ||mean||_2 over all elements of the image's output (channels and locations);
    ``norm="p99"``: per location, ||SE||_2 / ||mean||_2 over its channels, then the 99th percentile over
    locations (linear interpolation). A zero mean with a zero SE counts as 0, with a nonzero SE as inf."""
    n, N = passes, population
    if n < 2:
        return torch.full((images.numel(),), float("inf"))
    k = max(N - n, 0) / (N * n * (n - 1))
    m2, mean = welford.m2[images], welford.mean[images]
    if norm == "grid":
        se, size = (m2.flatten(1).sum(1) * k).sqrt(), mean.flatten(1).norm(dim=1)
    else:
        se, size = (m2.sum(1).flatten(1) * k).sqrt(), mean.norm(dim=1).flatten(1)
    ratio = torch.where(size > 0, se / size.clamp(min=1e-30), torch.where(se > 0, float("inf"), 0.0))
    return ratio if norm == "grid" else torch.quantile(ratio, 0.99, dim=1)


class MedianBuffer:
    """All passes' aligned maps kept in memory (a median needs them), within a byte budget."""

    def __init__(self, passes: int, shape: tuple[int, ...], budget_bytes: float, device=None, name: str = "output"):
        need = passes * math.prod(shape) * 4
        if need > budget_bytes:
            raise BudgetError(
                f"aggregate=median for {name!r} needs {need / 2**30:.2f} GiB to buffer {passes} passes of "
                f"{tuple(shape)} floats, above median_budget_gb={budget_bytes / 2**30:.2f}; raise the budget, "
                "use a coarser stride, fewer samples, or aggregate=mean (srt.* settings in the runner)"
            )
        self.values = torch.full((passes, *shape), float("nan"), device=device)

    def add(self, value: torch.Tensor, coverage: torch.Tensor, images: slice, pass_index: int) -> None:
        self.values[pass_index, images] = torch.where(coverage > 0, value, torch.full_like(value, float("nan")))

    def result(self) -> torch.Tensor:
        # lower median for an even count (torch convention); locations no pass covered become 0
        return torch.nan_to_num(self.values.nanmedian(dim=0).values, nan=0.0)
