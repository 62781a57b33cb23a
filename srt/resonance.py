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

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .aggregate import AlignedPasses, MedianBuffer, PhaseMean, TapMean, Welford, coverage_weights
from .config import SRTConfig
from .errors import UserError
from .shifts import ShiftSet, make_shifts, pad_for_shifts, shift_padded

FeatureFn = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]


class _GridStats:
    """Everything aggregated for one grid output: the mean (or median) field and optional dispersion.

    ``cell`` is the output's own stride q (pixels per cell of what ``fn`` returns), ``stride`` the stride of
    the aggregated field (a divisor of q)."""

    def __init__(
        self,
        name: str,
        batch_channels: tuple[int, int],
        grid: tuple[int, int],
        cell: int,
        stride: int,
        shifts: torch.Tensor,
        border: str,
        aggregate: str,
        dispersion: bool,
        budget_bytes: float,
        device,
    ):
        B, C = batch_channels
        T = shifts.shape[0]
        H, W = grid[0] * cell, grid[1] * cell
        self.name, self.aggregate, self.pixel_weights = name, aggregate, None
        if border == "official":
            self.mean = PhaseMean(B, C, grid, cell, stride, 1.0 / T, device)
        elif stride == 1:  # normalized at pixel resolution: the plain sum divided by the coverage count
            self.mean = PhaseMean(B, C, grid, cell, stride, 1.0, device)
            self.pixel_weights = coverage_weights(shifts, (H, W)).float().to(device)
        else:
            self.mean = TapMean(B, C, grid, cell, stride, coverage_weights(shifts, (H, W)), device)
        needs_passes = dispersion or aggregate == "median"
        self.aligned = AlignedPasses(grid, cell, stride, normalized=border == "normalized") if needs_passes else None
        out_shape = (B, C, H // stride, W // stride)
        self.welford = Welford(out_shape, device) if dispersion else None
        self.median = MedianBuffer(T, out_shape, budget_bytes, device, name) if aggregate == "median" else None

    def add(self, values: torch.Tensor, shift: tuple[int, int], images: slice, pass_index: int) -> None:
        if self.aggregate == "mean":
            self.mean.add(values, shift, images)
        if self.aligned is not None:
            value, coverage = self.aligned(values, shift)
            if self.median is not None:  # copies value; Welford then consumes it
                self.median.add(value, coverage, images, pass_index)
            if self.welford is not None:
                self.welford.add(value, coverage, images)

    def results(self) -> dict[str, torch.Tensor]:
        if self.median is not None:
            field = self.median.result()
        else:
            field = self.mean.result()
            if self.pixel_weights is not None:
                field = field * self.pixel_weights
        out = {self.name: field}
        if self.welford is not None:
            var = self.welford.variance()
            out[f"{self.name}_var"] = var
            out[f"{self.name}_dispersion"] = var.mean(dim=1, keepdim=True)
        return out


class _GlobalMean:
    """Plain mean over passes of a global output (CLS, prefix tokens)."""

    def __init__(self, name: str, passes: int, shape: tuple[int, ...], device):
        self.name, self.passes = name, passes
        self.sum = torch.zeros(shape, device=device)

    def add(self, values: torch.Tensor, shift, images: slice, pass_index: int) -> None:
        self.sum[images] += values

    def results(self) -> dict[str, torch.Tensor]:
        return {self.name: self.sum / self.passes}


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
        """All passes of ``images``, aggregated. ``stride``: None keeps every grid at its own stride (pooled);
        an integer asks for that stride (grids already finer keep their own)."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise UserError(f"images must be a 4-D tensor [B,3,H,W]; got {shape}")
        B, device = images.shape[0], images.device
        H, W = images.shape[-2:]
        shifts = self.shift_set.shifts
        T = len(shifts)
        stats: dict[str, _GridStats | _GlobalMean] = {}
        order: list[str] = []

        def stats_for(name: str, value: torch.Tensor):
            if name not in stats:
                order.append(name)
                if value.dim() == 4:
                    cell = grid_stride(name, value, (H, W), self.name)
                    out_stride = cell if stride is None else _output_stride(name, cell, stride)
                    stats[name] = _GridStats(
                        name,
                        (B, value.shape[1]),
                        tuple(value.shape[-2:]),
                        cell,
                        out_stride,
                        shifts,
                        self.border,
                        self.aggregate,
                        self.dispersion,
                        self.median_budget_gb * 2**30,
                        device,
                    )
                else:
                    stats[name] = _GlobalMean(name, T, (B, *value.shape[1:]), device)
            return stats[name]

        margin = self.shift_set.max_abs
        padded = pad_for_shifts(images, margin, self.fill)
        pairs = [(t, b) for t in range(T) for b in range(B)]  # pass-major: a chunk holds few distinct shifts
        chunks = range(0, len(pairs), self.batch_size)
        for start in tqdm(chunks, desc=f"{type(self).__name__} {self.name}", disable=not self.progress, leave=False):
            runs: list[tuple[int, int, int]] = []  # (pass, first image, end image)
            for t, b in pairs[start : start + self.batch_size]:
                if runs and runs[-1][0] == t:
                    runs[-1] = (t, runs[-1][1], b + 1)
                else:
                    runs.append((t, b, b + 1))
            x = torch.cat([self._pass_input(padded[b0:b1], margin, t, (H, W)) for t, b0, b1 in runs])
            out = self._call_fn(x)
            offset = 0
            for t, b0, b1 in runs:
                n, shift = b1 - b0, (int(shifts[t, 0]), int(shifts[t, 1]))
                for name, value in out.items():
                    v = value[offset : offset + n].float()
                    stats_for(name, v).add(v, shift, slice(b0, b1), t)
                offset += n

        result: dict[str, torch.Tensor] = {}
        for name in order:
            result.update(stats[name].results())
        return {name: result[name] for name in order} | {n: v for n, v in result.items() if n not in order}

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


class StochasticResonance(_PassEnsemble):
    """SRT around any feature function: same call signature, same output keys and shapes.

    Args (see :class:`srt.config.SRTConfig` for the full meaning of each):
        fn: ``images [B,3,H,W] -> dict`` of named outputs (an :class:`srt.Backbone`, a backbone + head, ...).
        level: shifts |dy|, |dx| <= level; 0 is the plain forward pass (``fn(images)`` itself).
        patch_size: the ViT's patch size p (default ``fn.patch_size``): bounds the level (< p) and sets the
            default dense stride p/2.
        step: only shifts that are multiples of ``step`` (the official visualisation uses step 2).
        samples, sampling, seed: use ``samples`` of the grid shifts (random or stratified).
        fill: ``zero`` (official), ``reflect`` or ``replicate`` padding of the shifted images.
        border: ``official`` (divide by the passes) or ``normalized`` (by the passes covering a location).
        aggregate: ``mean`` or ``median``; dispersion: add ``<name>_var`` and ``<name>_dispersion``.
        output: ``pooled`` (every grid at its own stride) or ``dense`` (``stride`` pixels per cell) for ``__call__``.
        batch_size: (image, shift) pairs per forward chunk.
        official_parity: prepend the extra unshifted pass of the official code.
        at_block: SRT inside the network: ``fn`` must have ``split(k)`` (an :class:`srt.Backbone`); SRT runs over
            the front half and the back half runs once on the ensembled tokens (CLS included).
        autocast: bfloat16 autocast for the passes on CUDA.
        progress: show a progress bar over chunks.
    """

    def __init__(
        self,
        fn: FeatureFn,
        level: int = 3,
        patch_size: int | None = None,
        step: int = 1,
        samples: int | None = None,
        sampling: str = "random",
        fill: str = "zero",
        border: str = "official",
        aggregate: str = "mean",
        dispersion: bool = False,
        output: str = "pooled",
        stride: int | None = None,
        batch_size: int = 32,
        seed: int = 0,
        official_parity: bool = False,
        at_block: int | None = None,
        autocast: bool = False,
        median_budget_gb: float = 4.0,
        progress: bool = False,
    ):
        patch_size = patch_size if patch_size is not None else getattr(fn, "patch_size", None)
        if patch_size is None:
            raise UserError(
                f"patch_size is required: {_fn_name(fn)} has no patch_size attribute; pass the ViT's patch size, "
                "e.g. StochasticResonance(fn, patch_size=14)"
            )
        config = SRTConfig(
            method="shift",
            level=level,
            step=step,
            samples=samples,
            sampling=sampling,
            fill=fill,
            border=border,
            aggregate=aggregate,
            dispersion=dispersion,
            output=output,
            stride=stride,
            batch_size=batch_size,
            seed=seed,
            official_parity=official_parity,
            at_block=at_block,
            autocast=autocast,
            median_budget_gb=median_budget_gb,
        ).validate(patch_size=patch_size)
        shift_set = make_shifts(level, samples, sampling, seed, official_parity, patch_size, step=step)
        front, back = self._split(fn, at_block, output)
        super().__init__(
            front,
            shift_set,
            patch_size=patch_size,
            fill=fill,
            border=border,
            aggregate=aggregate,
            dispersion=dispersion,
            batch_size=batch_size,
            autocast=autocast,
            median_budget_gb=median_budget_gb,
            progress=progress,
            name=_fn_name(fn),
        )
        self.config = config
        self._back = back
        self.wrapped = fn  # the whole function (fn itself, also with at_block)
        self.at_block = front.block if at_block is not None else None
        self.stride = patch_size if output == "pooled" else (stride or max(patch_size // 2, 1))

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

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"level={c.level}, passes={self.passes} ({self.shift_set.description}), fill={c.fill}, "
            f"border={c.border}, aggregate={c.aggregate}, output={c.output}, stride={self.stride}, "
            f"at_block={self.at_block}"
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
