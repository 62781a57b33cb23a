"""StochasticResonance: the drop-in SRT wrapper around a backbone.

``StochasticResonance(bb, level=3)(images)`` returns the same dict, keys and shapes as ``bb(images)``,
but every grid output is the SRT ensemble of the (2L+1)^2 shifted passes pooled back to the token grid,
and every global output (CLS) is the plain mean over passes. ``.dense(images, stride)`` returns the
finer aligned field instead (stride 1: pixel resolution). See :mod:`srt.aggregate` for the exact
definition of both and the engines that compute them.

Cost model (T passes, batch B, grid h x w tokens, C channels, output stride s, P = p/s):
- forward passes: T*B, run in chunks of ``batch_size`` (image, shift) pairs;
- mean, official border: O(16 C h w) per pass plus one O(C H/s W/s) cumulative sum per image
  (PhaseMean), so pooled and dense cost about the same and both are dominated by the forward passes;
- mean, normalized border at 1 < s <= p: O(4 C H/s W/s) per pass (TapMean);
- dispersion or median: O(4 C H/s W/s) per pass; the median also buffers T maps (bounded by a budget);
- memory: one output-sized accumulator per output (+ a variance pair with dispersion) and one chunk of
  activations: it does not grow with T (except the median's buffer).
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .aggregate import AlignedPasses, MedianBuffer, PhaseMean, TapMean, Welford, coverage_weights
from .backbones import Backbone, OutputSpec
from .config import SRTConfig
from .shifts import make_shifts, pad_for_shifts, shift_padded


class _GridStats:
    """Everything aggregated for one grid output: the mean (or median) field and optional dispersion."""

    def __init__(
        self,
        name: str,
        batch_channels: tuple[int, int],
        grid: tuple[int, int],
        patch: int,
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
        H, W = grid[0] * patch, grid[1] * patch
        self.name, self.aggregate, self.pixel_weights = name, aggregate, None
        if border == "official":
            self.mean = PhaseMean(B, C, grid, patch, stride, 1.0 / T, device)
        elif stride == 1:  # normalized at pixel resolution: the plain sum divided by the coverage count
            self.mean = PhaseMean(B, C, grid, patch, stride, 1.0, device)
            self.pixel_weights = coverage_weights(shifts, (H, W)).float().to(device)
        else:
            self.mean = TapMean(B, C, grid, patch, stride, coverage_weights(shifts, (H, W)), device)
        needs_passes = dispersion or aggregate == "median"
        self.aligned = AlignedPasses(grid, patch, stride, normalized=border == "normalized") if needs_passes else None
        out_shape = (B, C, H // stride, W // stride)
        self.welford = Welford(out_shape, device) if dispersion else None
        self.median = MedianBuffer(T, out_shape, budget_bytes, device, name) if aggregate == "median" else None

    def add(self, tokens: torch.Tensor, shift: tuple[int, int], images: slice, pass_index: int) -> None:
        if self.aggregate == "mean":
            self.mean.add(tokens, shift, images)
        if self.aligned is not None:
            value, coverage = self.aligned(tokens, shift)
            if self.welford is not None:
                self.welford.add(value, coverage, images)
            if self.median is not None:
                self.median.add(value, coverage, images, pass_index)

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

    def add(self, value: torch.Tensor, shift, images: slice, pass_index: int) -> None:
        self.sum[images] += value

    def results(self) -> dict[str, torch.Tensor]:
        return {self.name: self.sum / self.passes}


class StochasticResonance(nn.Module):
    """SRT around a :class:`~srt.backbones.Backbone`: same call signature, same output keys and shapes.

    Args (see :class:`srt.config.SRTConfig` for the full meaning of each):
        level: shifts |dy|, |dx| <= level; 0 is the plain forward pass.
        samples, sampling, seed: use ``samples`` of the grid shifts (random or stratified).
        fill: ``zero`` (official), ``reflect`` or ``replicate`` padding of the shifted images.
        border: ``official`` (divide by the passes) or ``normalized`` (by the passes covering a location).
        aggregate: ``mean`` or ``median``; dispersion: add ``<name>_var`` and ``<name>_dispersion``.
        output: ``pooled`` (token grid) or ``dense`` (``stride`` pixels per cell) for ``__call__``.
        batch_size: (image, shift) pairs per forward chunk.
        official_parity: prepend the extra unshifted pass of the official code.
        at_block: ensemble the tokens after this block, then run the remaining blocks once on the result,
            so every output after that block (including CLS) comes from SRT features.
        autocast: bfloat16 autocast for the passes on CUDA.
        progress: show a progress bar over chunks.
    """

    def __init__(
        self,
        backbone: Backbone,
        level: int = 3,
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
        super().__init__()
        self.config = SRTConfig(
            method="shift",
            level=level,
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
        ).validate(patch_size=backbone.patch_size)
        self.backbone = backbone
        self.shift_set = make_shifts(level, samples, sampling, seed, official_parity, backbone.patch_size)
        self.at_block = self._check_block(at_block, output)
        self.progress = progress
        p = backbone.patch_size
        self.stride = p if output == "pooled" else (stride or max(p // 2, 1))
        if autocast and not torch.cuda.is_available():
            warnings.warn("srt.autocast=true has no effect without CUDA; running in float32", stacklevel=2)

    # -- the backbone's interface ----------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.backbone.name

    @property
    def patch_size(self) -> int:
        return self.backbone.patch_size

    @property
    def mean(self):
        return self.backbone.mean

    @property
    def std(self):
        return self.backbone.std

    @property
    def weights(self) -> str:
        return self.backbone.weights

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.backbone.outputs

    @property
    def passes(self) -> int:
        """Forward passes per image."""
        return len(self.shift_set)

    @property
    def level(self) -> int:
        return self.config.level

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.stride == self.patch_size and self._is_plain():
            return self.backbone(images)  # level 0: exactly the plain forward pass
        return self._ensemble(images, self.stride)

    def dense(self, images: torch.Tensor, stride: int = 1) -> dict[str, torch.Tensor]:
        """Grid outputs at ``stride`` pixels per cell ([B,C,H/stride,W/stride]); globals averaged."""
        p = self.patch_size
        if stride < 1 or p % stride:
            raise ValueError(
                f"stride={stride} is not valid; expected a divisor of the patch size {p}: "
                f"{[s for s in range(1, p + 1) if p % s == 0]}"
            )
        if self.at_block is not None:
            raise ValueError("dense output is not available with at_block (the remaining blocks run on token grids)")
        return self._ensemble(images, stride)

    # -- internals -------------------------------------------------------------------------------

    def _is_plain(self) -> bool:
        return len(self.shift_set) == 1 and self.shift_set.max_abs == 0

    def _check_block(self, at_block: int | None, output: str) -> int | None:
        if at_block is None:
            return None
        depth = self.backbone.depth
        if not -depth <= at_block < depth:
            raise ValueError(
                f"srt.at_block={at_block} is not valid for {self.backbone.name} with {depth} blocks; "
                f"expected 0..{depth - 1} (or negative from the end)"
            )
        if output == "dense":
            raise ValueError(
                "srt.at_block cannot be combined with srt.output=dense: the remaining blocks run on the "
                "pooled token grid, so the outputs are token grids"
            )
        return at_block % depth

    def _perturb(self, images: torch.Tensor, pass_index: int) -> torch.Tensor:
        """Hook for other perturbations applied after the shift (see JitterEnsemble)."""
        return images

    def _autocast(self, device: torch.device):
        if self.config.autocast and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def _ensemble(self, images: torch.Tensor, stride: int) -> dict[str, torch.Tensor]:
        bb = self.backbone
        hw = bb.check_images(images)
        B, device = images.shape[0], images.device
        H, W = images.shape[-2:]
        p = self.patch_size
        shifts = self.shift_set.shifts
        T = len(shifts)
        specs: list[OutputSpec] = list(bb.output_specs.values())
        k = self.at_block
        early = specs if k is None else [s for s in specs if s.block <= k]
        late = [] if k is None else [s for s in specs if s.block > k]

        stats: dict[str, Any] = {}

        def stats_for(name: str, value: torch.Tensor, is_grid: bool):
            if name not in stats:
                if name == "_grid":  # the state handed to the remaining blocks: pooled mean, always
                    stats[name] = _GridStats(
                        name, (B, value.shape[1]), hw, p, p, shifts, self.config.border, "mean", False, 0, device
                    )
                elif is_grid:
                    stats[name] = _GridStats(
                        name,
                        (B, value.shape[1]),
                        hw,
                        p,
                        stride,
                        shifts,
                        self.config.border,
                        self.config.aggregate,
                        self.config.dispersion,
                        self.config.median_budget_gb * 2**30,
                        device,
                    )
                else:
                    stats[name] = _GlobalMean(name, T, (B, *value.shape[1:]), device)
            return stats[name]

        margin = self.shift_set.max_abs
        padded = pad_for_shifts(images, margin, self.config.fill)
        pairs = [(t, b) for t in range(T) for b in range(B)]  # shift-major: a chunk holds few distinct shifts
        chunks = range(0, len(pairs), self.config.batch_size)
        for start in tqdm(chunks, desc=f"SRT {bb.name} L={self.level}", disable=not self.progress, leave=False):
            chunk = pairs[start : start + self.config.batch_size]
            runs: list[tuple[int, int, int]] = []  # (pass, first image, end image)
            for t, b in chunk:
                if runs and runs[-1][0] == t:
                    runs[-1] = (t, runs[-1][1], b + 1)
                else:
                    runs.append((t, b, b + 1))
            x = torch.cat(
                [
                    self._perturb(shift_padded(padded[b0:b1], margin, int(shifts[t, 0]), int(shifts[t, 1]), (H, W)), t)
                    for t, b0, b1 in runs
                ]
            )
            with self._autocast(device):
                if k is None:
                    out = bb.run(bb.embed(x), hw, early)
                else:
                    out = bb.run(bb.embed(x), hw, early, stop=k)
                    prefix, grid = bb.split_state(out.pop("_state"), hw)
                    out["_grid"] = grid
                    if prefix is not None:
                        out["_prefix"] = prefix
            offset = 0
            for t, b0, b1 in runs:
                n, shift = b1 - b0, (int(shifts[t, 0]), int(shifts[t, 1]))
                for name, value in out.items():
                    is_grid = name == "_grid" or (name != "_prefix" and bb.is_grid(name))
                    v = value[offset : offset + n].float()
                    stats_for(name, v, is_grid).add(v, shift, slice(b0, b1), t)
                offset += n

        result: dict[str, torch.Tensor] = {}
        for s in stats.values():
            result.update(s.results())
        if k is not None:
            state = bb.join_state(result.pop("_prefix", None), result.pop("_grid"))
            result.update(bb.run(state, hw, late, start=k + 1))
        return {name: result[name] for name in bb.outputs} | {n: v for n, v in result.items() if n not in bb.outputs}

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"level={c.level}, passes={self.passes} ({self.shift_set.description}), fill={c.fill}, "
            f"border={c.border}, aggregate={c.aggregate}, output={c.output}, stride={self.stride}, "
            f"at_block={self.at_block}"
        )


class JitterEnsemble(StochasticResonance):
    """The paper's "naive ensemble" baseline: the same number of passes with colour jitter instead of shifts.

    Pass 0 is the clean image; every other pass jitters brightness and contrast by a factor drawn uniformly
    in [1 - strength, 1 + strength], saturation by half that and hue by a quarter (at 0.4: DINO's
    ColorJitter(0.4, 0.4, 0.2, 0.1)). Jitter is applied in [0, 1] pixel space, then re-normalised. The
    features of all passes are averaged plainly (no shift, nothing to align).
    """

    def __init__(
        self,
        backbone: Backbone,
        passes: int = 49,
        strength: float = 0.4,
        seed: int = 0,
        batch_size: int = 32,
        progress: bool = False,
    ):
        super().__init__(backbone, level=0, batch_size=batch_size, seed=seed, progress=progress)
        if passes < 1:
            raise ValueError(f"jitter passes={passes} is not valid; expected >= 1")
        if not 0 <= strength < 1:
            raise ValueError(f"jitter strength={strength} is not valid; expected 0 <= strength < 1")
        self.shift_set = dataclasses.replace(
            self.shift_set, shifts=torch.zeros(passes, 2, dtype=torch.long), description=f"{passes} colour jitters"
        )
        gen = torch.Generator().manual_seed(seed)
        u = torch.rand(passes, 4, generator=gen) * 2 - 1
        self.factors = torch.stack(
            [1 + strength * u[:, 0], 1 + strength * u[:, 1], 1 + strength / 2 * u[:, 2], strength / 4 * u[:, 3]], dim=1
        )
        self.factors[0] = torch.tensor([1.0, 1.0, 1.0, 0.0])
        self.strength = strength

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._ensemble(images, self.patch_size)

    def _perturb(self, images: torch.Tensor, pass_index: int) -> torch.Tensor:
        import torchvision.transforms.v2.functional as TF

        if pass_index == 0:
            return images
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        x = (images * std + mean).clamp(0, 1)
        b, c, s, h = self.factors[pass_index].tolist()
        x = TF.adjust_hue(TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(x, b), c), s), h)
        return (x - mean) / std

    def extra_repr(self) -> str:
        return f"passes={self.passes}, strength={self.strength}"


def build_extractor(
    backbone: Backbone, cfg: SRTConfig | Mapping[str, Any], progress: bool = False
) -> StochasticResonance:
    """The feature extractor an SRT config describes (``method`` shift: SRT; jitter: the naive ensemble)."""
    if not isinstance(cfg, SRTConfig):
        unknown = set(cfg) - {f.name for f in dataclasses.fields(SRTConfig)}
        if unknown:
            raise ValueError(
                f"unknown srt settings {sorted(unknown)}; valid: {[f.name for f in dataclasses.fields(SRTConfig)]}"
            )
        cfg = SRTConfig(**cfg)
    cfg.validate(patch_size=backbone.patch_size)
    if cfg.method == "jitter":
        passes = cfg.jitter_passes or (2 * cfg.level + 1) ** 2 + int(cfg.official_parity)
        return JitterEnsemble(
            backbone,
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
    return StochasticResonance(backbone, **fields, progress=progress)
