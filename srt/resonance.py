"""Ensembles of a feature function over perturbed copies of its input: SRT and the colour-jitter baseline.

``StochasticResonance(fn, level=3)`` wraps any callable ``fn(images [B,3,H,W]) -> dict of named tensors``: an
:class:`srt.Backbone`, a backbone followed by a head, the front half of a split network, a student network.
It returns the same dict, keys and shapes as ``fn(images)``:

- a 4-D output ``[B,C,h,w]`` is a *grid*; its stride q = H/h (= W/w) is read from its shape. Each pass's grid
  is nearest-upsampled by q, shifted back and averaged (see :mod:`srt.aggregate` for the exact definition and
  the engines). Token grids (q = p) come back pooled to the token grid (the drop-in replacement); a map at
  pixel resolution (q = 1, e.g. a depth map) comes back as the per-pixel mean of the un-shifted maps, which is
  the paper's output ensemble: ``StochasticResonance(lambda x: {"depth": depther(x)}, patch_size=14)``;
- any other output (CLS ``[B,C]``, prefix tokens ``[B,n,C]``) is a *global*: the plain mean over passes.

``.dense(images, stride)`` returns the grids at a finer stride (stride 1: pixel resolution).
``StochasticResonance(bb, at_block=k)`` is SRT inside the network: SRT over ``front`` of ``bb.split(k)``, then
``back`` once on the ensembled tokens. :class:`JitterEnsemble` (the paper's naive baseline) is a sibling that
shares the streaming aggregation but perturbs colours instead of positions, so it has no dense output.

Cost model (T passes, batch B, grid h x w cells of q pixels, C channels, output stride s, P = q/s):
- forward passes: T*B, run in chunks of ``batch_size`` (image, pass) pairs;
- mean, official border: O(16 C h w) per pass plus one O(C H/s W/s) cumulative sum per image
  (PhaseMean), so pooled and dense cost about the same and both are dominated by the forward passes;
- mean, normalized border at 1 < s <= q: O(4 C H/s W/s) per pass (TapMean);
- dispersion or median: O(4 C H/s W/s) per pass; the median also buffers T maps (bounded by a budget);
- memory: one output-sized accumulator per output (+ a variance pair with dispersion) and one chunk of
  activations: it does not grow with T (except the median's buffer).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .aggregate import (
    AlignedPasses,
    MedianBuffer,
    PhaseMean,
    TapMean,
    Welford,
    coverage_weights,
    relative_standard_error,
)
from .config import SRTConfig
from .errors import UserError
from .shifts import ShiftSet, balanced_order, make_shifts, pad_for_shifts, shift_padded

FeatureFn = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]


@dataclasses.dataclass(frozen=True)
class _StatsSpec:
    """How the outputs of one call are aggregated (shared by all its outputs)."""

    shifts: torch.Tensor  # [T, 2], every pass of the call
    border: str
    aggregate: str
    dispersion: bool  # return <name>_var and <name>_dispersion
    track: bool  # keep the Welford statistics the adaptive stopping rule reads (even without dispersion)
    budget_bytes: float  # the median's buffer
    device: Any


def _per_image(passes: list[int]) -> float | torch.Tensor:
    """1 / passes of each image: one number when all images took the same passes (the full ensemble's case)."""
    if len(set(passes)) == 1:
        return 1.0 / passes[0]
    return 1.0 / torch.tensor(passes, dtype=torch.float64)


class _GridStats:
    """Everything aggregated for one grid output: the mean (or median) field and optional dispersion.

    ``cell`` is the output's own stride q (pixels per cell of what ``fn`` returns), ``stride`` the stride of
    the aggregated field (a divisor of q)."""

    def __init__(self, name: str, shape: tuple[int, int, int, int], cell: int, stride: int, spec: _StatsSpec):
        B, C, h, w = shape
        H, W = h * cell, w * cell
        self.name, self.spec, self.pixel_weights = name, spec, None
        if spec.border == "official" or stride == 1:  # official: divided by each image's passes at the end
            self.mean = PhaseMean(B, C, (h, w), cell, stride, 1.0, spec.device)
            if spec.border != "official":  # normalized at pixel resolution: the sum divided by the coverage count
                self.pixel_weights = coverage_weights(spec.shifts, (H, W)).float().to(spec.device)
        else:
            self.mean = TapMean(B, C, (h, w), cell, stride, coverage_weights(spec.shifts, (H, W)), spec.device)
        welford = spec.dispersion or spec.track
        needs_passes = welford or spec.aggregate == "median"
        normalized = spec.border == "normalized"
        self.aligned = AlignedPasses((h, w), cell, stride, normalized=normalized) if needs_passes else None
        out_shape = (B, C, H // stride, W // stride)
        self.welford = Welford(out_shape, spec.device) if welford else None
        T = spec.shifts.shape[0]
        median = spec.aggregate == "median"
        self.median = MedianBuffer(T, out_shape, spec.budget_bytes, spec.device, name) if median else None

    def add(self, values: torch.Tensor, shift: tuple[int, int], images: slice, pass_index: int) -> None:
        if self.spec.aggregate == "mean":
            self.mean.add(values, shift, images)
        if self.aligned is not None:
            value, coverage = self.aligned(values, shift)
            if self.median is not None:  # copies value; Welford then consumes it
                self.median.add(value, coverage, images, pass_index)
            if self.welford is not None:
                self.welford.add(value, coverage, images)

    def results(self, passes: list[int]) -> dict[str, torch.Tensor]:
        if self.median is not None:
            field = self.median.result()
        elif isinstance(self.mean, PhaseMean):
            field = self.mean.result(_per_image(passes) if self.spec.border == "official" else None)
            if self.pixel_weights is not None:
                field = field * self.pixel_weights
        else:
            field = self.mean.result()
        out = {self.name: field}
        if self.spec.dispersion:
            var = self.welford.variance()
            out[f"{self.name}_var"] = var
            out[f"{self.name}_dispersion"] = var.mean(dim=1, keepdim=True)
        return out


class _GlobalMean:
    """Plain mean over passes of a global output (CLS, prefix tokens); Welford statistics when tracked."""

    def __init__(self, name: str, shape: tuple[int, ...], spec: _StatsSpec):
        self.name = name
        self.sum = torch.zeros(shape, device=spec.device)
        flat = (shape[0], math.prod(shape[1:]), 1, 1)  # Welford's [B, C, h, w] layout: one location
        self.welford = Welford(flat, spec.device) if spec.track else None

    def add(self, values: torch.Tensor, shift, images: slice, pass_index: int) -> None:
        self.sum[images] += values
        if self.welford is not None:
            one = torch.ones(1, 1, device=values.device)
            self.welford.add(values.reshape(values.shape[0], -1, 1, 1).clone(), one, images)

    def results(self, passes: list[int]) -> dict[str, torch.Tensor]:
        if len(set(passes)) == 1:
            return {self.name: self.sum / passes[0]}
        n = torch.tensor(passes, dtype=self.sum.dtype, device=self.sum.device)
        return {self.name: self.sum / n.view(-1, *[1] * (self.sum.dim() - 1))}


class _CallStats:
    """The aggregators of one call, one per output, made when the output is first seen (in ``fn``'s order)."""

    def __init__(self, size: tuple[int, int], stride: int | None, spec: _StatsSpec, batch: int, fn_name: str):
        self.size, self.stride, self.spec, self.batch, self.fn_name = size, stride, spec, batch, fn_name
        self.stats: dict[str, _GridStats | _GlobalMean] = {}

    def add(self, name: str, value: torch.Tensor, shift: tuple[int, int], images: slice, pass_index: int) -> None:
        if name not in self.stats:
            shape = (self.batch, *value.shape[1:])
            if value.dim() == 4:
                cell = grid_stride(name, value, self.size, self.fn_name)
                out_stride = cell if self.stride is None else _output_stride(name, cell, self.stride)
                self.stats[name] = _GridStats(name, shape, cell, out_stride, self.spec)
            else:
                self.stats[name] = _GlobalMean(name, shape, self.spec)
        self.stats[name].add(value, shift, images, pass_index)

    def relative_error(self, images: torch.Tensor, passes: int, norm: str) -> torch.Tensor:
        """The stopping rule's estimate for each image of ``images``: the largest over all outputs."""
        population = self.spec.shifts.shape[0]
        ratios = [relative_standard_error(s.welford, images, passes, population, norm) for s in self.stats.values()]
        return torch.stack(ratios).amax(0) if ratios else torch.zeros(images.numel())

    def results(self, passes: list[int]) -> dict[str, torch.Tensor]:
        result: dict[str, torch.Tensor] = {}
        for stats in self.stats.values():
            result.update(stats.results(passes))
        order = list(self.stats)
        return {name: result[name] for name in order} | {n: v for n, v in result.items() if n not in order}


@dataclasses.dataclass(frozen=True)
class StoppingRule:
    """When an image of adaptive SRT stops taking passes (see :func:`srt.aggregate.relative_standard_error`).

    Passes are taken in rounds: ``min_passes`` first, then ``check_every`` at a time, the last round ending at
    the full set. After each round, an image whose estimated relative standard error is below ``tolerance``
    (strictly: ``tolerance=0`` never stops early) leaves the batch."""

    tolerance: float
    norm: str = "grid"
    min_passes: int = 8
    check_every: int = 4

    def rounds(self, order: list[int]) -> list[list[int]]:
        cuts = [0, *range(self.min_passes, len(order), self.check_every), len(order)]
        return [order[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]

    def unfinished(self, stats: _CallStats, active: torch.Tensor, passes: int) -> torch.Tensor:
        """The images of ``active`` (indices) that go on after ``passes`` passes."""
        error = stats.relative_error(active, passes, self.norm)
        return active[~(error < self.tolerance)]


def _fn_name(fn: Any) -> str:
    return str(getattr(fn, "name", None) or getattr(fn, "__name__", None) or type(fn).__name__)


def grid_stride(name: str, value: torch.Tensor, image_size: tuple[int, int], fn_name: str = "fn") -> int:
    """Pixels per cell of a grid output [B,C,h,w] for images of ``image_size``; ValueError naming the output
    unless the grid divides the image by the same integer on both axes."""
    (H, W), (h, w) = image_size, tuple(value.shape[-2:])
    if h < 1 or w < 1 or H % h or W % w or H // h != W // w:
        raise UserError(
            f"{fn_name} output {name!r} is a {h}x{w} grid (shape {tuple(value.shape)}) for {H}x{W} images; "
            "expected a grid that divides the image size by the same integer stride on both axes "
            "(e.g. a token grid H/p x W/p, or a map at pixel resolution H x W)"
        )
    return H // h


class _PassEnsemble(nn.Module):
    """Runs ``fn`` on T perturbed copies of a batch and streams every output into its aggregator.

    Pass t translates the images by ``shift_set.shifts[t]`` (exact integer shift, ``fill`` at the border) and
    then applies ``perturb(images, t)`` if given; its grid outputs are shifted back before aggregation.
    Subclasses decide which passes exist and which outputs they offer.
    """

    def __init__(
        self,
        fn: FeatureFn,
        shift_set: ShiftSet,
        *,
        patch_size: int | None,
        fill: str = "zero",
        border: str = "official",
        aggregate: str = "mean",
        dispersion: bool = False,
        batch_size: int = 32,
        autocast: bool = False,
        median_budget_gb: float = 4.0,
        progress: bool = False,
        perturb: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        name: str | None = None,
    ):
        super().__init__()
        if not callable(fn):
            raise UserError(f"fn must be a callable images -> dict of named tensors; got {type(fn).__name__}")
        self.fn = fn
        self.shift_set = shift_set
        self.patch_size = patch_size
        self.fill, self.border, self.aggregate, self.dispersion = fill, border, aggregate, dispersion
        self.batch_size, self.autocast, self.median_budget_gb = batch_size, autocast, median_budget_gb
        self.progress = progress
        self.perturb = perturb
        # what tasks read from a feature extractor, taken from fn when it has it (srt.Backbone does)
        self.mean = tuple(mean) if mean is not None else getattr(fn, "mean", None)
        self.std = tuple(std) if std is not None else getattr(fn, "std", None)
        self.name = name or _fn_name(fn)
        self.weights = getattr(fn, "weights", None)
        self.stopping: StoppingRule | None = None  # adaptive SRT: when an image stops taking passes
        self.last_passes: list[int] = []  # passes each image of the last call took
        self.passes_seen: collections.Counter = collections.Counter()  # passes -> images, over all calls
        if autocast and not torch.cuda.is_available():
            warnings.warn("autocast=true has no effect without CUDA; running in float32", stacklevel=3)

    @property
    def outputs(self) -> tuple[str, ...] | None:
        return getattr(self.fn, "outputs", None)

    @property
    def passes(self) -> int:
        """Forward passes of ``fn`` per image."""
        return len(self.shift_set)

    def _autocast(self, device: torch.device):
        if self.autocast and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _call_fn(self, x: torch.Tensor) -> Mapping[str, torch.Tensor]:
        with self._autocast(x.device):
            out = self.fn(x)
        if not isinstance(out, Mapping):
            raise UserError(
                f"{self.name} returned a {type(out).__name__}; expected a dict of named tensors "
                "(e.g. lambda x: {'depth': model(x)})"
            )
        for name, value in out.items():
            if not isinstance(value, torch.Tensor) or value.dim() < 1 or value.shape[0] != x.shape[0]:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise UserError(
                    f"{self.name} output {name!r} is {shape} for a batch of {x.shape[0]} images; expected a tensor "
                    "whose first dimension is the batch ([B,C,h,w] grids, [B,...] globals)"
                )
        return out

    @torch.no_grad()
    def _aggregate(self, images: torch.Tensor, stride: int | None) -> dict[str, torch.Tensor]:
        """All passes of ``images`` (or, with a stopping rule, each image's prefix of them), aggregated.
        ``stride``: None keeps every grid at its own stride (pooled); an integer asks for that stride (grids
        already finer keep their own)."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise UserError(f"images must be a 4-D tensor [B,3,H,W]; got {shape}")
        B, size = images.shape[0], tuple(images.shape[-2:])
        rule = self.stopping
        spec = _StatsSpec(
            self.shift_set.shifts,
            self.border,
            self.aggregate,
            self.dispersion,
            rule is not None,
            self.median_budget_gb * 2**30,
            images.device,
        )
        stats = _CallStats(size, stride, spec, B, self.name)
        margin = self.shift_set.max_abs
        padded = pad_for_shifts(images, margin, self.fill)
        order = list(range(len(self.shift_set)))  # passes are taken in the shift set's order
        rounds = rule.rounds(order) if rule is not None else [order]
        active, done, used = torch.arange(B), 0, [0] * B
        bar = tqdm(
            total=len(order) * B, desc=f"{type(self).__name__} {self.name}", disable=not self.progress, leave=False
        )
        for passes in rounds:
            self._run_passes(passes, active.tolist(), padded, margin, stats, bar)
            done += len(passes)
            for b in active.tolist():
                used[b] = done
            if rule is not None and done < len(order):
                active = rule.unfinished(stats, active, done)
                if active.numel() == 0:
                    break
        bar.close()
        self._record_passes(used)
        return stats.results(used)

    def _run_passes(self, passes: list[int], images: list[int], padded, margin: int, stats: _CallStats, bar) -> None:
        """Passes ``passes`` (indices of shifts) of the images ``images``, in chunks of ``batch_size`` pairs."""
        size = (padded.shape[-2] - 2 * margin, padded.shape[-1] - 2 * margin)
        shifts = self.shift_set.shifts
        pairs = [(t, b) for t in passes for b in images]  # pass-major: a chunk holds few distinct shifts
        for start in range(0, len(pairs), self.batch_size):
            runs: list[tuple[int, list[int]]] = []  # (pass, images in a contiguous run of the batch)
            for t, b in pairs[start : start + self.batch_size]:
                if runs and runs[-1][0] == t and runs[-1][1][-1] == b - 1:
                    runs[-1][1].append(b)
                else:
                    runs.append((t, [b]))
            x = torch.cat([self._pass_input(padded[bs[0] : bs[-1] + 1], margin, t, size) for t, bs in runs])
            out = self._call_fn(x)
            offset = 0
            for t, bs in runs:
                n, shift = len(bs), (int(shifts[t, 0]), int(shifts[t, 1]))
                for name, value in out.items():
                    stats.add(name, value[offset : offset + n].float(), shift, slice(bs[0], bs[-1] + 1), t)
                offset += n
            bar.update(len(pairs[start : start + self.batch_size]))

    def _record_passes(self, used: list[int]) -> None:
        self.last_passes = list(used)
        self.passes_seen.update(used)

    def passes_used(self) -> dict[str, Any] | None:
        """Passes per image over every image since construction: mean, min, max, images, full (the whole set),
        and the order they are taken in; None before any image."""
        if not self.passes_seen:
            return None
        total = sum(n * k for n, k in self.passes_seen.items())
        images = sum(self.passes_seen.values())
        return {
            "mean": round(total / images, 3),
            "min": min(self.passes_seen),
            "max": max(self.passes_seen),
            "images": images,
            "full": self.passes,
            "order": self.shift_set.shifts.tolist(),
        }

    def _pass_input(self, padded: torch.Tensor, margin: int, t: int, size: tuple[int, int]) -> torch.Tensor:
        dy, dx = (int(v) for v in self.shift_set.shifts[t])
        x = shift_padded(padded, margin, dy, dx, size)
        return self.perturb(x, t) if self.perturb is not None else x


def _output_stride(name: str, cell: int, stride: int) -> int:
    """Stride at which a grid of ``cell`` pixels per cell is returned when ``stride`` is asked for."""
    if cell % stride == 0:
        return stride
    if stride % cell == 0:  # already finer than asked: kept as it is
        return cell
    raise UserError(
        f"output {name!r} has {cell}-pixel cells, which cannot be refined to stride {stride}; expected a stride "
        f"dividing {cell}: {[s for s in range(1, cell + 1) if cell % s == 0]}"
    )


_NOT_SETTINGS = ("method", "jitter_passes", "jitter_strength")


def _settings(config: SRTConfig | None, level: int | None, settings: Mapping[str, Any]) -> SRTConfig:
    """The SRT settings of a :class:`StochasticResonance`: ``config`` (default: SRTConfig's defaults) with the
    keyword ``settings`` (and ``level``) replacing its fields."""
    valid = [f.name for f in dataclasses.fields(SRTConfig) if f.name not in _NOT_SETTINGS]
    unknown = sorted(set(settings) - set(valid))
    if unknown:
        raise TypeError(f"StochasticResonance got unknown settings {unknown}; valid: {valid}")
    if config is not None and not isinstance(config, SRTConfig):
        raise UserError(f"config must be an srt.SRTConfig; got {type(config).__name__}")
    if config is not None and config.method != "shift":
        raise UserError(f"config.method={config.method!r}: StochasticResonance is method=shift (see build_extractor)")
    if level is not None:
        settings = {**settings, "level": level}
    return dataclasses.replace(config or SRTConfig(), **settings)


class StochasticResonance(_PassEnsemble):
    """SRT around any feature function: same call signature, same output keys and shapes.

    ``StochasticResonance(fn, level=3, **settings)`` or ``StochasticResonance(fn, config=SRTConfig(...))``
    (keywords override the config's fields). The settings are the fields of :class:`srt.config.SRTConfig`
    except ``method`` and ``jitter_*`` (see there for each one's meaning); besides them:

        fn: ``images [B,3,H,W] -> dict`` of named outputs (an :class:`srt.Backbone`, a backbone + head, ...).
        level: shifts |dy|, |dx| <= level; 0 is the plain forward pass (``fn(images)`` itself).
        patch_size: the ViT's patch size p (default ``fn.patch_size``): bounds the level (< p) and sets the
            default dense stride p/2.
        progress: show a progress bar over (image, pass) pairs.

    The most used settings: ``step`` (only multiples of step: the official visualisation uses 2), ``samples``
    / ``sampling`` / ``seed`` (a subset of the shifts), ``fill``, ``border`` (``official`` or ``normalized``),
    ``aggregate`` (``mean`` or ``median``), ``dispersion`` (add ``<name>_var`` and ``<name>_dispersion``),
    ``output`` (``pooled`` or ``dense`` at ``stride``), ``batch_size`` ((image, shift) pairs per forward
    chunk), ``official_parity`` (the official code's extra unshifted pass), ``at_block`` (SRT inside the
    network: ``fn`` must have ``split(k)``; the back half runs once on the ensembled tokens, CLS included).

    ``shift_set`` lists the passes in the order they are taken: over the whole grid, :func:`srt.shifts.balanced_order`
    (any prefix covers every row and column of the shift square evenly); a ``samples`` subset in its own order. Adaptive SRT,
    ``tolerance=eps`` (with ``tolerance_norm``, ``min_passes``, ``check_every``): after ``min_passes`` and then
    every ``check_every`` passes, an image whose running mean has an estimated standard error below ``eps``
    times the mean's magnitude stops and leaves the batch (:class:`StoppingRule`); every output (grids and
    globals) must meet the bound. The error measure (``tolerance_norm``):

    - ``grid`` (default): ||SE||_2 / ||mean||_2, both norms over all elements (channels x locations) of the
      image's aggregated output, at the output's stride (the pooled token grid, or the dense grid);
    - ``p99``: the 99th percentile over locations of ||SE(y,x)||_2 / ||mean(y,x)||_2, norms over channels, so
      that a few boundary tokens are not averaged away by the interior;

    with SE^2 = s^2 / n * (N - n) / N per element: s^2 the sample variance over the n passes taken (Welford),
    N the passes of the full set (the finite-population correction of sampling without replacement). The
    estimate treats the prefix as a simple random sample of the set; the balanced order is stratified, which
    usually makes the true error smaller. ``tolerance=0`` runs the same machinery and never stops early: it
    equals the full ensemble exactly. After a call, ``last_passes`` holds each image's passes;
    :meth:`passes_used` sums them up over all calls and :meth:`cost` gives the expected and worst-case passes.
    Adaptive SRT needs the whole grid (``samples`` null), ``border=official`` and ``aggregate=mean``.
    """

    def __init__(
        self,
        fn: FeatureFn,
        level: int | None = None,
        patch_size: int | None = None,
        *,
        config: SRTConfig | None = None,
        progress: bool = False,
        **settings: Any,
    ):
        patch_size = patch_size if patch_size is not None else getattr(fn, "patch_size", None)
        if patch_size is None:
            raise UserError(
                f"patch_size is required: {_fn_name(fn)} has no patch_size attribute; pass the ViT's patch size, "
                "e.g. StochasticResonance(fn, patch_size=14)"
            )
        c = _settings(config, level, settings).validate(patch_size=patch_size)
        shift_set = make_shifts(c.level, c.samples, c.sampling, c.seed, c.official_parity, patch_size, step=c.step)
        if c.samples is None:  # the whole grid, in the balanced order (after the official parity pass, if any)
            k = int(c.official_parity)
            order = torch.cat([torch.arange(k), balanced_order(c.level, c.step) + k])
            shift_set = ShiftSet(shift_set.shifts[order], shift_set.level, shift_set.description + ", balanced order")
        front, back = self._split(fn, c.at_block, c.output)
        super().__init__(
            front,
            shift_set,
            patch_size=patch_size,
            fill=c.fill,
            border=c.border,
            aggregate=c.aggregate,
            dispersion=c.dispersion,
            batch_size=c.batch_size,
            autocast=c.autocast,
            median_budget_gb=c.median_budget_gb,
            progress=progress,
            name=_fn_name(fn),
        )
        self.config = c
        self._back = back
        self.wrapped = fn  # the whole function (fn itself, also with at_block)
        self.at_block = front.block if c.at_block is not None else None
        self.stride = patch_size if c.output == "pooled" else (c.stride or max(patch_size // 2, 1))
        if c.tolerance is not None:
            self.stopping = StoppingRule(c.tolerance, c.tolerance_norm, c.min_passes, c.check_every)

    @staticmethod
    def _split(fn: FeatureFn, at_block: int | None, output: str):
        if at_block is None:
            return fn, None
        if output == "dense":
            raise UserError(
                "at_block cannot be combined with output=dense: the remaining blocks run on the pooled token "
                "grid, so the outputs are token grids"
            )
        if not callable(getattr(fn, "split", None)):
            raise UserError(
                f"at_block={at_block} needs a network that can be cut after a block (a split(k) method, as "
                f"srt.Backbone has); {_fn_name(fn)} has none"
            )
        try:
            return fn.split(at_block)
        except ValueError as e:
            raise UserError(f"at_block={at_block} is not valid: {e}") from e

    @property
    def level(self) -> int:
        return self.config.level

    @property
    def outputs(self) -> tuple[str, ...] | None:
        return getattr(self.wrapped, "outputs", None)

    def _is_plain(self) -> bool:
        return len(self.shift_set) == 1 and self.shift_set.max_abs == 0 and not self.dispersion

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.config.output == "dense":
            return self.dense(images, self.stride)
        if self._is_plain():
            self._record_passes([1] * len(images))
            return self.wrapped(images)  # level 0: exactly the plain forward pass
        out = self._aggregate(images, None)
        return self._back(out) if self._back is not None else out

    def dense(self, images: torch.Tensor, stride: int = 1) -> dict[str, torch.Tensor]:
        """Grid outputs at ``stride`` pixels per cell ([B,C,H/stride,W/stride]); globals averaged."""
        p = self.patch_size
        if not isinstance(stride, int) or stride < 1 or p % stride:
            raise UserError(
                f"stride={stride} is not valid; expected a divisor of the patch size {p}: "
                f"{[s for s in range(1, p + 1) if p % s == 0]}"
            )
        if self._back is not None:
            raise UserError("dense output is not available with at_block (the remaining blocks run on token grids)")
        return self._aggregate(images, stride)

    def cost(self) -> dict[str, Any]:
        """Forward passes of ``fn`` per image: ``worst`` (the full set) and ``expected``: the full set without a
        tolerance; with one, the mean over the images seen so far (None before the first call), since how
        soon an image settles depends on the image."""
        used = self.passes_used()
        if self.stopping is None:
            expected: float | None = float(self.passes)
        else:
            expected = used["mean"] if used is not None else None
        return {"passes_expected": expected, "passes_worst": self.passes, "images_seen": used and used["images"]}

    def extra_repr(self) -> str:
        c = self.config
        adaptive = "" if c.tolerance is None else f", tolerance={c.tolerance} ({c.tolerance_norm})"
        return (
            f"level={c.level}, passes={self.passes} ({self.shift_set.description}), fill={c.fill}, "
            f"border={c.border}, aggregate={c.aggregate}, output={c.output}, stride={self.stride}, "
            f"at_block={self.at_block}{adaptive}"
        )


class ColourJitter:
    """Per-pass colour jitter of normalised images (pass 0 stays clean), as the paper's naive ensemble uses.

    Brightness and contrast factors are drawn uniformly in [1 - strength, 1 + strength], saturation in half
    that range and hue in a quarter (at 0.4: DINO's ColorJitter(0.4, 0.4, 0.2, 0.1)). The jitter is applied
    in [0, 1] pixel space, then re-normalised with ``mean`` / ``std``. Seeded: pass t always gets the same
    factors."""

    def __init__(self, passes: int, strength: float, seed: int, mean, std):
        if passes < 1:
            raise UserError(f"jitter passes={passes} is not valid; expected >= 1")
        if not 0 <= strength < 1:
            raise UserError(f"jitter strength={strength} is not valid; expected 0 <= strength < 1")
        if mean is None or std is None:
            raise UserError("colour jitter needs the normalisation (mean, std) of the images to undo it")
        self.strength, self.mean, self.std = strength, tuple(mean), tuple(std)
        u = torch.rand(passes, 4, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        self.factors = torch.stack(
            [1 + strength * u[:, 0], 1 + strength * u[:, 1], 1 + strength / 2 * u[:, 2], strength / 4 * u[:, 3]],
            dim=1,
        )
        self.factors[0] = torch.tensor([1.0, 1.0, 1.0, 0.0])

    def __call__(self, images: torch.Tensor, pass_index: int) -> torch.Tensor:
        import torchvision.transforms.v2.functional as TF

        if pass_index == 0:
            return images
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        x = (images * std + mean).clamp(0, 1)
        b, c, s, h = self.factors[pass_index].tolist()
        x = TF.adjust_hue(TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(x, b), c), s), h)
        return (x - mean) / std


class JitterEnsemble(_PassEnsemble):
    """The paper's "naive ensemble" baseline: passes with colour jitter instead of shifts, averaged plainly.

    A sibling of :class:`StochasticResonance` sharing its streaming aggregation. Nothing moves, so nothing is
    aligned and there is no finer grid to offer: it has no ``dense()``. See :class:`ColourJitter`."""

    def __init__(
        self,
        fn: FeatureFn,
        passes: int = 49,
        strength: float = 0.4,
        seed: int = 0,
        batch_size: int = 32,
        progress: bool = False,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        patch_size: int | None = None,
    ):
        jitter = ColourJitter(
            passes,
            strength,
            seed,
            mean if mean is not None else getattr(fn, "mean", None),
            std if std is not None else getattr(fn, "std", None),
        )
        shift_set = ShiftSet(torch.zeros(passes, 2, dtype=torch.long), 0, f"{passes} colour jitters")
        patch_size = patch_size if patch_size is not None else getattr(fn, "patch_size", None)
        super().__init__(
            fn,
            shift_set,
            patch_size=patch_size,
            batch_size=batch_size,
            progress=progress,
            perturb=jitter,
            mean=jitter.mean,
            std=jitter.std,
        )
        self.jitter = jitter
        self.stride = patch_size

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._aggregate(images, None)

    def extra_repr(self) -> str:
        return f"passes={self.passes}, strength={self.jitter.strength}"


def build_extractor(
    fn: FeatureFn, cfg: SRTConfig | Mapping[str, Any], progress: bool = False
) -> StochasticResonance | JitterEnsemble:
    """The feature extractor an SRT config describes (``method`` shift: SRT; jitter: the naive ensemble)."""
    if not isinstance(cfg, SRTConfig):
        unknown = set(cfg) - {f.name for f in dataclasses.fields(SRTConfig)}
        if unknown:
            raise UserError(
                f"unknown srt settings {sorted(unknown)}; valid: {[f.name for f in dataclasses.fields(SRTConfig)]}"
            )
        cfg = SRTConfig(**cfg)
    patch_size = getattr(fn, "patch_size", None)
    cfg.validate(patch_size=patch_size)
    if cfg.method == "jitter":
        passes = cfg.jitter_passes or len(make_shifts(cfg.level, step=cfg.step)) + int(cfg.official_parity)
        return JitterEnsemble(
            fn,
            passes=passes,
            strength=cfg.jitter_strength,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            progress=progress,
        )
    fields = {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(SRTConfig)
        if f.name not in ("method", "jitter_passes", "jitter_strength")
    }
    return StochasticResonance(fn, **fields, patch_size=patch_size, progress=progress)
