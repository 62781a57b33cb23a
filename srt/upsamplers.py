"""Every way of getting a feature field finer than a ViT's token grid, behind one interface, with its cost.

A *fine-feature method* is an ``nn.Module`` with the feature-extractor attributes tasks read (``patch_size``,
``stride``, ``mean``, ``std``, ``name``, ``passes``, ``weights``, ``backbone``) and

- ``method(images) -> dict``: every grid output at the configured ``stride`` ([B,C,H/stride,W/stride]);
  globals (CLS) as the method gives them;
- ``method.dense(images, stride)``: the same at another stride (a :class:`StrideError` when the method
  cannot produce it; ``method.strides`` lists those it can);
- ``method.cost((H, W))``: its :class:`Cost` model (forward passes, tokens per pass, compute in plain-pass
  equivalents, a note on attention); ``method.report()`` adds the measured wall time and peak memory.

The methods (:func:`build_upsampler` builds them from an :class:`srt.config.UpsamplerConfig`):

==============  ===========================================================================================
``srt_dense``    SRT (:class:`srt.StochasticResonance`, any level, shift subsets) at the output stride.
``nearest``      the plain token grid, each token repeated over its p/s x p/s cells (= SRT level 0).
``bilinear``     the plain token grid, bilinear between token centres (``align_corners=False``; borders clamp).
``stride``       stride reduction (dino-vit-features): :class:`StrideReducedViT`, one pass over (p/s)^2 as
                 many tokens.
``stride_srt``   SRT over the stride-reduced ViT (shifts below its token stride s).
``jitter``       the colour-jitter ensemble (:class:`srt.JitterEnsemble`) on the token grid, then nearest or
                 bilinear.
``shift_jitter`` :class:`ShiftJitterEnsemble`: every pass shifted *and* colour-jittered, aligned like SRT.
``featup``,      learned upsamplers loaded with ``torch.hub`` from the local hub cache
``loftup``,      (:class:`HubUpsampler`), applied to this backbone's token grids.
``jafar``,
``anyup``,
``naf``
==============  ===========================================================================================

Tasks consume them unchanged: DAVIS propagates on ``method(x)["tokens"]`` at ``method.stride``; TokenCut cuts the
fine grid (``task.grid=token``: the method's stride; ``task.grid=dense``: ``method.dense``); ``task=fidelity``
compares ``method.dense`` with finer-resolution features. Hook for heads that accept a finer grid (the depth
task): when the extractor is a :class:`FineFeatures`, ``extractor.dense(images, stride)`` returns every grid output
the backbone was asked for (``block{k}``, ...) at that stride and ``extractor.backbone`` is the plain backbone.

Cost model (image H x W, patch p, output stride s, P = p/s, plain grid N = HW/p^2 tokens, C channels, depth D):
one ViT pass costs about D (12 N C^2 + 2 N^2 C) multiply-adds (linear layers + attention);
``Cost.pass_equivalents`` is a method's ViT compute per image in units of that. SRT and the ensembles: T passes
of N tokens (T plain-pass equivalents; aggregation is O(C H W / s^2) per image on top). Nearest / bilinear: one
pass. Stride reduction: one pass of P^2 N tokens: the linear layers cost P^2 times as much, attention P^4
times (its N^2 pairs become P^4 N^2): for ViT-S/14 (C=384) at 476x840 (N=2040), s=7 costs 9.6 plain passes
and s=2 (P=7, 99960 tokens) 1153. Learned upsamplers: one pass plus their own network (not modelled: measured).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones import Backbone, PosEmbedResampling
from .config import SRTConfig, UpsamplerConfig
from .errors import MissingFileError, UserError
from .resonance import ColourJitter, StochasticResonance, build_extractor


class StrideError(UserError):
    """A method was asked for an output stride it cannot produce."""


class HubUpsamplerUnavailableError(MissingFileError):
    """A learned upsampler's torch.hub repository (or its entry point, weights, dependencies) is not available
    locally. The message says what to download and where to put it."""


def divisors(n: int) -> tuple[int, ...]:
    return tuple(d for d in range(1, n + 1) if n % d == 0)


# ----------------------------------------------------------------------------------------------
# Cost model


@dataclass(frozen=True)
class Cost:
    """What one image costs a method (see the module docstring for the model).

    ``passes``: forward passes of the ViT; ``tokens_per_pass``: patch tokens in each (prefix tokens not
    counted); ``pass_equivalents``: ViT multiply-adds per image / those of one plain pass at the same image
    size; ``attention``: how the attention cost scales; ``extra``: cost the model does not count."""

    passes: int
    tokens_per_pass: int
    pass_equivalents: float
    attention: str
    extra: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def vit_pass_macs(tokens: int, backbone: Any) -> float:
    """Multiply-adds of one pass of ``backbone``'s transformer blocks over ``tokens`` patch tokens (+ its prefix
    tokens): per block 12 n C^2 (qkv, projection, 4x MLP) + 2 n^2 C (q k^T and attention x v)."""
    n = tokens + int(getattr(backbone, "num_prefix_tokens", 0))
    c = int(getattr(backbone, "embed_dim", 1))
    depth = int(getattr(backbone, "depth", 1))
    return float(depth * (12 * n * c * c + 2 * n * n * c))


def _grid_tokens(image_size: tuple[int, int], stride: int) -> int:
    H, W = image_size
    return (H // stride) * (W // stride)


# ----------------------------------------------------------------------------------------------
# Measurement


def _status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


_MALLOC_SET = False
_PROCESS_PEAK_KIB = 0  # the process's resident high-water mark before Meter's resets


def _return_freed_memory() -> None:
    """glibc: serve blocks above 128 KiB by mmap and give them back when freed (M_MMAP_THRESHOLD fixed, so not
    raised dynamically), so that resident memory tracks live tensors and a call's peak can be read from it.
    Process-wide and permanent; affects only how fast large blocks are allocated, never results."""
    global _MALLOC_SET
    if _MALLOC_SET or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 131072)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 131072)  # M_TRIM_THRESHOLD
    _MALLOC_SET = True


def process_peak_rss_mib() -> Optional[float]:
    """Peak resident memory of this process over its life, including what :class:`Meter` resets hid."""
    hwm = _status_kib("VmHWM")
    if hwm is None:
        return None
    return max(hwm, _PROCESS_PEAK_KIB) / 1024


class Meter:
    """Wall time per image and peak memory per call of the calls it wraps (the peak over calls, the first call
    left out once there are others).

    Peak memory: on CUDA the peak allocated by torch above what was allocated before the call; on Linux the
    resident high-water mark (VmHWM, reset through /proc/self/clear_refs before each call) above the resident
    memory before it, with glibc returning freed blocks at once (:func:`_return_freed_memory`). Elsewhere None.
    The resets hide earlier peaks from ``getrusage``; :func:`process_peak_rss_mib` keeps the true one."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.seconds = 0.0
        self.images = 0
        self.calls = 0
        self.peak_mib: Optional[float] = None
        self._peaks: list[float] = []
        if enabled:
            _return_freed_memory()

    @contextlib.contextmanager
    def measure(self, n_images: int, device: torch.device):
        if not self.enabled:
            yield
            return
        global _PROCESS_PEAK_KIB
        cuda = device.type == "cuda"
        base = None
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        else:
            hwm = _status_kib("VmHWM")
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                _PROCESS_PEAK_KIB = max(_PROCESS_PEAK_KIB, hwm or 0)
                base = _status_kib("VmRSS")
            except OSError:
                base = None
        t0 = time.perf_counter()
        yield
        if cuda:
            torch.cuda.synchronize(device)
        self.seconds += time.perf_counter() - t0
        self.images += n_images
        self.calls += 1
        peak = None
        if cuda:
            peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        elif base is not None:
            hwm = _status_kib("VmHWM")
            peak = (hwm - base) / 1024 if hwm is not None else None
        # the first call also pays one-off allocations (thread pools, kernels' workspaces): it counts only
        # until a second call has been measured
        if peak is not None:
            self._peaks.append(peak)
            self.peak_mib = max(self._peaks[1:] if len(self._peaks) > 1 else self._peaks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds_per_image": self.seconds / self.images if self.images else None,
            "peak_mib": None if self.peak_mib is None else round(self.peak_mib, 1),
            "measured_calls": self.calls,
        }


# ----------------------------------------------------------------------------------------------
# Stride reduction


def cubic_axis_weights(centres: torch.Tensor, n_in: int, scale: float, antialias: bool) -> torch.Tensor:
    """Weights ``[n_out, n_in]`` of torch's bicubic resampling along one axis, evaluated at arbitrary output
    positions: ``centres`` are output pixel centres in output-index units (pixel j of a regular grid: j + 0.5),
    ``scale`` input/output size ratio. For ``centres = arange(n_out) + 0.5`` this is exactly
    ``F.interpolate(mode="bicubic", align_corners=False)`` with ``scale_factor = 1/scale`` (no antialias: cubic
    convolution, A = -0.75, border taps clamped) or, with ``antialias``, its PIL-style filter (A = -0.5, support
    widened by the scale when downsampling, weights normalised); the tests check both against torch."""
    centres = centres.double()
    W = torch.zeros(len(centres), n_in, dtype=torch.float64)

    def kernel(x: torch.Tensor, a: float) -> torch.Tensor:
        x = x.abs()
        near = ((a + 2) * x - (a + 3)) * x * x + 1
        far = (((x - 5) * x + 8) * x - 4) * a
        return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))

    if not antialias:
        real = centres * scale - 0.5
        base = torch.floor(real)
        for k in range(-1, 3):
            W.scatter_add_(1, (base + k).clamp(0, n_in - 1).long()[:, None], kernel(real - base - k, -0.75)[:, None])
        return W
    support = 2.0 * max(scale, 1.0)
    inv = 1.0 / scale if scale >= 1 else 1.0
    for i, c in enumerate((centres * scale).tolist()):
        lo, hi = max(int(c - support + 0.5), 0), min(int(c + support + 0.5), n_in)
        w = kernel((torch.arange(lo, hi, dtype=torch.float64) - c + 0.5) * inv, -0.5)
        W[i, lo:hi] = w / w.sum()
    return W


class StrideReducedViT(nn.Module):
    """A ViT run with patch-embedding stride ``stride`` < p: (p/s)^2 as many tokens, one pass.

    As in dino-vit-features (its ``patch_vit_resolution``): the patch embedding's convolution keeps its p x p
    kernel but moves by s pixels, so neighbouring tokens overlap; every block then runs on all the tokens.

    **Grid and alignment.** The image is padded by a = floor((p - s) / 2) pixels at the top and left and
    p - s - a at the bottom and right (``fill``: zero in normalised space, the mean colour, like SRT's shifted
    passes), so there are exactly H/s x W/s tokens and token (i, j) sees pixels [i s - a, i s - a + p) x
    [j s - a, j s - a + p): its centre is the centre of output cell (i, j) (exactly when p - s is even, half a
    pixel below and right of it when p - s is odd, e.g. p = 14, s = 7 or 1). dino-vit-features does not pad: it has
    1 + (H - p) // s tokens per axis, starting at pixel 0, which lie on no H/s grid.

    **Position embeddings, exactly.** Token (i, j) gets the backbone's own position embedding evaluated at its
    centre: the learned N x N table resampled with the backbone's formula (:class:`srt.backbones.PosEmbedResampling`:
    DINO / DINOv2 bicubic with scale factors N / (n + 0.1), registers and timm by size with antialiasing, no
    resampling when the plain grid is N x N), evaluated at the token centre c = (i s - a + p/2) / p in patch
    units instead of at j + 0.5 (:func:`cubic_axis_weights`). So at s = p this *is* the backbone (tests check
    equality), and a token whose window coincides with a plain token's (p/s odd) starts from exactly that
    token's embedding. dino-vit-features instead resizes the table to its 1 + (H - p) // s grid (scale factors
    (n' + 0.1) / N), which stretches it by a fraction of a patch.

    Cost: one pass over (H/s)(W/s) tokens: linear layers (p/s)^2, attention (p/s)^4 times a plain pass's.
    """

    passes = 1

    def __init__(self, backbone: Backbone, stride: int, fill: str = "zero"):
        super().__init__()
        if not isinstance(backbone, Backbone):
            raise UserError(f"stride reduction needs an srt.Backbone; got {type(backbone).__name__}")
        if backbone.family != "vit":
            raise UserError(
                f"stride reduction is not available for {backbone.name} (family {backbone.family!r}): it needs a "
                "plain ViT with one global position-embedding table; SAM's windowed attention and relative "
                "position tables are sized for its patch grid"
            )
        p = backbone.patch_size
        if not isinstance(stride, int) or stride < 1 or p % stride:
            raise StrideError(
                f"stride reduction: stride={stride!r} is not valid; expected a divisor of p={p}: {divisors(p)}"
            )
        if fill not in ("zero", "reflect", "replicate"):
            raise UserError(f"stride reduction: fill={fill!r} is not valid; expected zero, reflect or replicate")
        self.backbone = backbone
        self.stride = stride
        self.fill = fill
        self.pad_before = (p - stride) // 2
        self.pad_after = p - stride - self.pad_before
        # the formula of the backbone's own resampling (timm's way: by size, bicubic, antialiased)
        self.resampling = backbone.pos_embed_resampling or PosEmbedResampling(offset=0.0, antialias=True)
        for attr in ("name", "patch_size", "mean", "std", "weights", "outputs", "depth", "embed_dim"):
            setattr(self, attr, getattr(backbone, attr))
        self.num_prefix_tokens = backbone.num_prefix_tokens

    def train(self, mode: bool = True) -> StrideReducedViT:
        return super().train(False)

    def token_centres(self, n_cells: int) -> torch.Tensor:
        """Centres of the tokens along an axis of ``n_cells`` output cells, in pixels."""
        return torch.arange(n_cells, dtype=torch.float64) * self.stride - self.pad_before + self.backbone.patch_size / 2

    def patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The strided patch embedding ``[B, H/s, W/s, C]`` (no position embedding yet)."""
        a, b = self.pad_before, self.pad_after
        mode = "constant" if self.fill == "zero" else self.fill
        x = F.pad(images, (a, b, a, b), mode=mode) if a or b else images
        proj = self.backbone.model.patch_embed.proj
        x = F.conv2d(x, proj.weight, proj.bias, stride=self.stride).permute(0, 2, 3, 1)
        return self.backbone.model.patch_embed.norm(x)

    def position_embedding(self, image_size: tuple[int, int]) -> torch.Tensor:
        """``[1, (H/s)(W/s), C]``: the backbone's position embedding at every token centre (see the class doc)."""
        p, s = self.backbone.patch_size, self.stride
        table, _ = self.backbone.patch_pos_embed()
        C, N, _ = table.shape
        plain = (image_size[0] // p, image_size[1] // p)
        weights = []
        for n_plain, size in zip(plain, image_size):
            scale = 1.0 if plain == (N, N) else N / (n_plain + self.resampling.offset)
            centres = self.token_centres(size // s) / p  # in patch units: plain token j sits at j + 0.5
            weights.append(cubic_axis_weights(centres, N, scale, self.resampling.antialias))
        grid = torch.einsum("yi,cij,xj->yxc", weights[0], table.double(), weights[1])
        return grid.reshape(1, -1, C).to(table.dtype)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        m = self.backbone.model
        x = self.patch_tokens(images)
        x = self.backbone.add_pos_embed(x, self.position_embedding(tuple(images.shape[-2:])))
        return m.norm_pre(m.patch_drop(x) if hasattr(m, "patch_drop") else x)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        bb = self.backbone
        bb.check_images(images)
        hw = (images.shape[-2] // self.stride, images.shape[-1] // self.stride)
        out = bb.run(self.embed(images), hw, bb.output_specs.values())
        return {name: out[name] for name in bb.outputs}

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_before}, {self.pad_after}), fill={self.fill}"


# ----------------------------------------------------------------------------------------------
# Shifts and colour jitter together


class ShiftJitterEnsemble(StochasticResonance):
    """SRT whose every pass is also colour-jittered: pass t is shifted by the t-th shift, then jittered with
    the t-th :class:`srt.resonance.ColourJitter` factors (pass 0 clean), and aligned and aggregated exactly as
    SRT does (the shared ``perturb`` hook of the pass ensemble). Same arguments as
    :class:`srt.StochasticResonance` plus ``jitter_strength``; as many jitters as shifts."""

    def __init__(self, fn, *args, jitter_strength: float = 0.4, **kwargs):
        super().__init__(fn, *args, **kwargs)
        self.perturb = ColourJitter(len(self.shift_set), jitter_strength, self.config.seed, self.mean, self.std)
        self.jitter = self.perturb

    def extra_repr(self) -> str:
        return super().extra_repr() + f", jitter_strength={self.jitter.strength}"


# ----------------------------------------------------------------------------------------------
# The interface


class FineFeatures(nn.Module):
    """Base of every fine-feature method (see the module docstring). Subclasses set ``method``, implement
    ``_dense(images, stride)``, ``strides`` and ``cost``."""

    method = "?"

    def __init__(self, backbone: Any, stride: int, measure: bool = False):
        super().__init__()
        self.backbone = backbone  # the plain backbone: tasks that build their own pipeline read it
        self.patch_size = int(backbone.patch_size)
        self.mean, self.std = backbone.mean, backbone.std
        self.name = backbone.name
        self.weights = getattr(backbone, "weights", None)
        self.outputs = getattr(backbone, "outputs", None)
        self.meter = Meter(measure)
        self._image_size: Optional[tuple[int, int]] = None
        self.stride = self._check_stride(stride)

    @property
    def strides(self) -> tuple[int, ...]:
        """Output strides this method can produce."""
        return divisors(self.patch_size)

    @property
    def passes(self) -> int:
        """Forward passes of the ViT per image."""
        return 1

    def _check_stride(self, stride: Any) -> int:
        if isinstance(stride, bool) or not isinstance(stride, int) or stride not in self.strides:
            raise StrideError(
                f"{self.method} cannot produce stride {stride!r} for {self.name} (patch size {self.patch_size}); "
                f"it produces strides {list(self.strides)}"
            )
        return stride

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.dense(images, self.stride)

    @torch.no_grad()
    def dense(self, images: torch.Tensor, stride: int) -> dict[str, torch.Tensor]:
        """Grid outputs at ``stride`` pixels per cell; globals as the method gives them."""
        stride = self._check_stride(stride)
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise UserError(f"images must be a 4-D tensor [B,3,H,W]; got {shape}")
        self._image_size = (int(images.shape[-2]), int(images.shape[-1]))
        with self.meter.measure(images.shape[0], images.device):
            return self._dense(images, stride)

    def _dense(self, images: torch.Tensor, stride: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def cost(self, image_size: tuple[int, int]) -> Cost:
        raise NotImplementedError

    def _plain_cost(self, passes: int, token_stride: int, image_size: tuple[int, int], extra: str = "") -> Cost:
        tokens = _grid_tokens(image_size, token_stride)
        plain = _grid_tokens(image_size, self.patch_size)
        ratio = vit_pass_macs(tokens, self.backbone) / vit_pass_macs(plain, self.backbone)
        P = self.patch_size // token_stride
        attention = (
            f"{tokens} tokens per pass, N^2 attention pairs"
            if P == 1
            else f"{tokens} tokens per pass = (p/s)^2 = {P * P}x the plain grid: attention pairs {P**4}x, linear layers {P * P}x"
        )
        return Cost(passes, tokens, round(passes * ratio, 3), attention, extra)

    def report(self) -> dict[str, Any]:
        """The cost model at the last image size seen and what was measured (wall time, peak memory)."""
        size = list(self._image_size) if self._image_size is not None else None
        out: dict[str, Any] = {"method": self.method, "stride": self.stride, "image_size": size}
        if self._image_size is not None:
            out.update(self.cost(self._image_size).as_dict())
        out.update(self.meter.as_dict())
        return out

    def extra_repr(self) -> str:
        return f"method={self.method}, stride={self.stride}, passes={self.passes}"


class EnsembleFine(FineFeatures):
    """A shift ensemble (:class:`srt.StochasticResonance` or :class:`ShiftJitterEnsemble`, over the backbone or
    over :class:`StrideReducedViT`) at the output stride, through its own ``dense()``."""

    def __init__(self, backbone: Any, ensemble: StochasticResonance, stride: int, method: str, measure: bool = False):
        self.method = method
        self.ensemble_cell = int(ensemble.patch_size)  # the wrapped callable's own stride: p, or s for stride_srt
        super().__init__(backbone, stride, measure)
        self.ensemble = ensemble

    @property
    def strides(self) -> tuple[int, ...]:
        return divisors(self.ensemble_cell)

    @property
    def passes(self) -> int:
        return int(self.ensemble.passes)

    def _dense(self, images, stride):
        return self.ensemble.dense(images, stride)

    def cost(self, image_size):
        extra = "aggregation O(C H W / s^2) per image (streamed)"
        if getattr(self.ensemble, "stopping", None) is not None:  # adaptive SRT: passes is the worst case
            expected = self.ensemble.cost()["passes_expected"]
            extra += f"; adaptive (srt.tolerance): {self.passes} passes at most, {expected} on average so far"
        return self._plain_cost(self.passes, self.ensemble_cell, image_size, extra)


class InterpolatedFine(FineFeatures):
    """A token-stride callable (the plain backbone, the jitter ensemble, the stride-reduced ViT) whose grids are
    brought to the output stride by ``mode``: ``nearest`` (each cell repeated), ``bilinear`` (between cell
    centres, ``align_corners=False``, borders clamped) or None (only the callable's own stride)."""

    def __init__(
        self,
        backbone: Any,
        source: Callable,
        source_stride: int,
        stride: int,
        mode: Optional[str],
        method: str,
        measure: bool = False,
    ):
        if mode not in ("nearest", "bilinear", None):
            raise UserError(f"interpolation={mode!r} is not valid; expected nearest or bilinear")
        self.method, self.mode, self.source_stride = method, mode, int(source_stride)
        super().__init__(backbone, stride, measure)
        self.source = source

    @property
    def strides(self) -> tuple[int, ...]:
        return divisors(self.source_stride) if self.mode else (self.source_stride,)

    @property
    def passes(self) -> int:
        return int(getattr(self.source, "passes", 1))

    def _dense(self, images, stride):
        out = dict(self.source(images))
        factor = self.source_stride // stride
        for name, value in out.items():
            if value.dim() == 4 and factor > 1:
                kwargs = {"align_corners": False} if self.mode == "bilinear" else {}
                out[name] = F.interpolate(value, scale_factor=factor, mode=self.mode, **kwargs)
        return out

    def cost(self, image_size):
        return self._plain_cost(self.passes, self.source_stride, image_size)


# ----------------------------------------------------------------------------------------------
# Learned upsamplers through torch.hub


@dataclass(frozen=True)
class HubProject:
    """How a learned upsampler is published on torch.hub, as read in its repository (``revision``).

    ``entries``: backbone name -> hub entry point (``"*"``: any backbone); ``signature``: ``features_image``
    (``up(features, image)``, the output follows the guidance image's size or a fixed factor) or
    ``image_features_size`` (``up(image, features, (h, w))``); ``output``: ``image`` (the guidance image's size:
    we pass the image resized to the output grid), ``x16`` (a fixed 16x of the token grid, resized to the
    output grid here) or ``size`` (the size argument)."""

    name: str
    github: str
    revision: str
    entries: Mapping[str, str]
    signature: str
    output: str
    kwargs: Mapping[str, Any]
    note: str
    install: str = ""


HUB_PROJECTS: dict[str, HubProject] = {
    "featup": HubProject(
        "FeatUp (JBU)",
        "mhamilton723/FeatUp",
        "6b5a6c0",
        {"dinov2_vits14": "dinov2", "dino_vits16": "dino16"},
        "features_image",
        "x16",
        {"pretrained": True, "use_norm": True},
        "hubconf.py: entries vit, dino16, clip, dinov2, resnet50, maskclip (pretrained=True, use_norm=True) return "
        "an UpsampledBackbone; we call its .upsampler (JBUStack.forward(source, guidance): 4 x2 steps) on this "
        "backbone's tokens after its ChannelNorm (.model[-1] when use_norm)",
        "pip install git+https://github.com/mhamilton723/FeatUp (its hubconf lists the featup package as a dependency)",
    ),
    "loftup": HubProject(
        "LoftUp",
        "andrehuang/loftup",
        "6620d9b",
        {
            "dinov2_vits14": "loftup_dinov2s",
            "dinov2_vitb14": "loftup_dinov2b",
            "dinov2_vits14_reg": "loftup_dinov2s_reg",
            "dinov2_vitb14_reg": "loftup_dinov2b_reg",
        },
        "features_image",
        "image",
        {"pretrained": True},
        "hubconf.py: loftup_dinov2s/b[_reg], loftup_clip, loftup_siglip[2] (pretrained=True) return "
        "UpsamplerwithChannelNorm.forward(lr_feats, img); the output has the guidance image's size",
        "pip install huggingface_hub (its entries download weights with hf_hub_download)",
    ),
    "jafar": HubProject(
        "JAFAR",
        "PaulCouairon/JAFAR",
        "94d4d54",
        {},
        "image_features_size",
        "size",
        {},
        "the repository has no hubconf.py at 94d4d54, so there is no entry point to name: set upsampler.hub_entry "
        "(and upsampler.hub_dir) to a hub repository whose entry returns the JAFAR module; its call is "
        "JAFAR.forward(image, features, output_size) (src/upsampler/jafar.py)",
    ),
    "anyup": HubProject(
        "AnyUp",
        "wimmerth/anyup",
        "351807a",
        {"*": "anyup"},
        "image_features_size",
        "size",
        {"pretrained": True},
        "hubconf.py: anyup, anyup_multi_backbone (use_natten=False, pretrained=True, device='cpu'); "
        "AnyUp.forward(image, features, output_size=None, ...)",
    ),
    "naf": HubProject(
        "NAF",
        "valeoai/NAF",
        "ad4e24d",
        {"*": "naf"},
        "image_features_size",
        "size",
        {"pretrained": True},
        "hubconf.py: naf(pretrained=True, device='cpu'); NAF.forward(image, features, output_size)",
        "pip install natten (its hubconf lists it as a dependency)",
    ),
}
SIGNATURES = ("features_image", "image_features_size")
HUB_OUTPUTS = ("image", "x16", "size")


def hub_dir() -> Path:
    """torch.hub's directory: $TORCH_HOME/hub (default ~/.cache/torch/hub)."""
    return Path(torch.hub.get_dir())


def find_hub_repo(github: str, directory: Optional[str] = None) -> Path:
    """The local copy of a hub repository: ``directory`` if given, else ``<hub dir>/<owner>_<name>_<ref>`` as
    torch.hub stores it (``main`` / ``master`` preferred when several refs are there)."""
    if directory:
        path = Path(directory).expanduser()
        if not (path / "hubconf.py").is_file():
            raise HubUpsamplerUnavailableError(
                f"upsampler.hub_dir={directory}: {path / 'hubconf.py'} does not exist; expected a copy of the "
                f"{github} repository (a torch.hub repository with a hubconf.py)"
            )
        return path
    owner, name = github.split("/")
    root = hub_dir()
    found = sorted(p for p in root.glob(f"{owner}_{name}_*") if (p / "hubconf.py").is_file()) if root.is_dir() else []
    for ref in ("main", "master"):
        for p in found:
            if p.name == f"{owner}_{name}_{ref}":
                return p
    if found:
        return found[0]
    raise HubUpsamplerUnavailableError(
        f"{github} is not in the torch hub cache {root} (TORCH_HOME={os.environ.get('TORCH_HOME', '<unset>')}): no "
        f"directory {owner}_{name}_<ref> with a hubconf.py. Nothing is downloaded by this suite. On a machine with "
        f"network run python -c \"import torch; torch.hub.load('{github}', '<entry>', pretrained=True)\", then copy "
        f"its {root.name}/{owner}_{name}_main directory and {root.name}/checkpoints/ (the weights) into {root}; or "
        f"clone https://github.com/{github} anywhere and set upsampler.hub_dir=/path/to/it"
    )


def locate_hub_upsampler(
    project: str, backbone_name: str, entry: Optional[str] = None, directory: Optional[str] = None
) -> tuple[HubProject, str, Path]:
    """The project, its entry point for this backbone and its local repository, without importing anything from
    it (cheap: the runner calls it before building any model). :class:`HubUpsamplerUnavailableError` when the
    project has no entry for the backbone or the repository is not in the hub cache."""
    if project not in HUB_PROJECTS:
        raise UserError(f"unknown learned upsampler {project!r}; expected one of {', '.join(HUB_PROJECTS)}")
    spec = HUB_PROJECTS[project]
    entry = entry or spec.entries.get(backbone_name) or spec.entries.get("*")
    if not entry:
        known = ", ".join(f"{b}: {e}" for b, e in spec.entries.items()) or "none"
        raise HubUpsamplerUnavailableError(
            f"{spec.name} has no hub entry point for backbone {backbone_name} (known: {known}); {spec.note}. "
            "Set upsampler.hub_entry=<entry> if your copy of the repository has one."
        )
    return spec, entry, find_hub_repo(spec.github, directory)


class HubUpsampler(nn.Module):
    """A learned upsampler from a local torch.hub repository with its call normalised to
    ``up(features [B,C,h,w], image [B,3,H,W], size (h', w')) -> [B,C,h',w']``.

    Checks: the repository and entry exist locally (:class:`HubUpsamplerUnavailableError` naming what to download
    and where), the channel count matches what the module was built for (when it says), and the output shape
    (ValueError naming the project, the entry and the shapes). ``torch.hub.load(..., source="local")``: no
    network from here (an entry point may still fetch its weights from its own cache or URL)."""

    def __init__(
        self,
        project: str,
        backbone_name: str,
        entry: Optional[str] = None,
        directory: Optional[str] = None,
        signature: Optional[str] = None,
        kwargs: Optional[Mapping[str, Any]] = None,
        output: Optional[str] = None,
    ):
        super().__init__()
        spec, self.entry, self.repo = locate_hub_upsampler(project, backbone_name, entry, directory)
        self.project, self.spec = project, spec
        self.signature = signature or spec.signature
        self.output = output or spec.output
        if self.signature not in SIGNATURES:
            raise UserError(f"upsampler.hub_signature={self.signature!r} is not valid; expected one of {SIGNATURES}")
        if self.output not in HUB_OUTPUTS:
            raise UserError(f"upsampler.hub_output={self.output!r} is not valid; expected one of {HUB_OUTPUTS}")
        self.kwargs = dict(spec.kwargs if kwargs is None else kwargs)
        self.hub_model = self._load()
        self.expected_channels = self._expected_channels()

    def _load(self) -> nn.Module:
        spec, call = self.spec, f"torch.hub.load({str(self.repo)!r}, {self.entry!r}, source='local', **{self.kwargs})"
        try:
            model = torch.hub.load(str(self.repo), self.entry, source="local", **self.kwargs)
        except Exception as e:  # noqa: BLE001 - every failure is named: missing entry, dependency, weights
            text = f"{type(e).__name__}: {e}"
            if "Cannot find callable" in str(e):
                raise HubUpsamplerUnavailableError(
                    f"{spec.name}: {self.repo / 'hubconf.py'} has no entry point {self.entry!r}; it has "
                    f"{self.entries()} (set upsampler.hub_entry)"
                ) from e
            if "Missing dependencies" in str(e) or isinstance(e, ImportError):
                raise HubUpsamplerUnavailableError(
                    f"{spec.name}: {call} failed ({text}). " + (spec.install or "Install what its hubconf.py imports.")
                ) from e
            raise HubUpsamplerUnavailableError(
                f"{spec.name}: {call} failed ({text}). Its weights must be in the local caches (torch: "
                f"{hub_dir()}/checkpoints; Hugging Face: $HF_HOME/hub); copy them there from a machine with network"
            ) from e
        if not isinstance(model, nn.Module):
            raise UserError(f"{spec.name} entry {self.entry!r} returned a {type(model).__name__}, not an nn.Module")
        return model.eval().requires_grad_(False)

    def entries(self) -> list[str]:
        """The public callables of the repository's hubconf.py (its entry points), or why they cannot be listed."""
        import importlib.util

        sys.path.insert(0, str(self.repo))
        try:
            spec = importlib.util.spec_from_file_location("_srt_hubconf_listing", self.repo / "hubconf.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001 - only used to enrich an error message
            return [f"<cannot import hubconf.py: {type(e).__name__}: {e}>"]
        finally:
            sys.path.remove(str(self.repo))
        return sorted(
            n
            for n in dir(module)
            if not n.startswith("_")
            and callable(getattr(module, n))
            and getattr(getattr(module, n), "__module__", None) == module.__name__
        )

    def _expected_channels(self) -> Optional[int]:
        """The feature channels the module was built for, when it says (FeatUp's ``dim``; a LayerNorm's width)."""
        m = self.hub_model
        if isinstance(getattr(m, "dim", None), int):
            return m.dim
        norm = getattr(m, "channelnorm", None)
        if norm is not None:
            for sub in norm.modules():
                if isinstance(sub, nn.LayerNorm):
                    return int(sub.normalized_shape[0])
        return None

    def train(self, mode: bool = True) -> HubUpsampler:
        return super().train(False)

    def forward(self, features: torch.Tensor, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        B, C, h, w = features.shape
        label = f"{self.spec.name} (hub entry {self.entry!r} in {self.repo})"
        if self.expected_channels is not None and C != self.expected_channels:
            raise UserError(
                f"{label} was built for {self.expected_channels}-channel features; this backbone's grid has {C} "
                "channels: a learned upsampler is trained for one backbone, choose the entry of this backbone "
                "(upsampler.hub_entry)"
            )
        try:
            if self.signature == "image_features_size":
                out = self.hub_model(image, features, tuple(size))
            else:
                module = getattr(self.hub_model, "upsampler", None) if self.output == "x16" else None
                if module is not None:  # FeatUp: its upsampler, after its channel norm, on our features
                    model = getattr(self.hub_model, "model", None)
                    norm = model[-1] if isinstance(model, nn.Sequential) and self.kwargs.get("use_norm", True) else None
                    out = module(norm(features) if norm is not None else features, image)
                else:
                    guidance = (
                        image
                        if self.output != "image"
                        else F.interpolate(
                            image, size=tuple(size), mode="bilinear", align_corners=False, antialias=True
                        )
                    )
                    out = self.hub_model(features, guidance)
        except Exception as e:  # noqa: BLE001 - whatever the project's module raises, name it and the shapes
            raise UserError(
                f"{label} failed on features {tuple(features.shape)} and image {tuple(image.shape)}: {e}"
            ) from e
        expected = {"x16": (16 * h, 16 * w)}.get(self.output, tuple(size))
        if (
            not isinstance(out, torch.Tensor)
            or out.dim() != 4
            or tuple(out.shape[:2]) != (B, C)
            or tuple(out.shape[-2:]) != expected
        ):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise UserError(
                f"{label} returned {shape} for features {tuple(features.shape)}; expected {(B, C, *expected)} "
                f"(signature {self.signature}, output {self.output}): is upsampler.hub_signature / hub_output right?"
            )
        if expected != tuple(size):  # FeatUp's fixed 16x grid -> the output grid, area-weighted when shrinking
            out = F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
        return out

    def extra_repr(self) -> str:
        return f"project={self.project}, entry={self.entry}, repo={self.repo}, signature={self.signature}"


class LearnedFine(FineFeatures):
    """One plain pass, then a learned upsampler (:class:`HubUpsampler`) on every grid output."""

    def __init__(self, backbone: Any, upsampler: HubUpsampler, stride: int, measure: bool = False):
        self.method = upsampler.project
        super().__init__(backbone, stride, measure)
        self.upsampler = upsampler

    def _dense(self, images, stride):
        out = dict(self.backbone(images))
        size = (images.shape[-2] // stride, images.shape[-1] // stride)
        for name, value in out.items():
            if value.dim() == 4:
                out[name] = self.upsampler(value, images, size)
        return out

    def cost(self, image_size):
        return self._plain_cost(
            1, self.patch_size, image_size, f"+ the {self.upsampler.spec.name} network (measured, not modelled)"
        )


# ----------------------------------------------------------------------------------------------
# Building from a config


def build_upsampler(
    backbone: Backbone,
    cfg: UpsamplerConfig | Mapping[str, Any],
    srt_cfg: SRTConfig | Mapping[str, Any] | None = None,
    progress: bool = False,
) -> FineFeatures:
    """The fine-feature method ``cfg`` describes, around ``backbone``. ``method=srt`` is not one: it is
    :func:`srt.build_extractor` with the SRT settings alone. The ensembles read their shift and jitter settings
    from ``srt_cfg`` (level, step, samples, sampling, seed, fill, border, aggregate, batch_size, jitter_passes,
    jitter_strength; ``srt.output`` and ``srt.stride`` are replaced by the upsampler's stride)."""
    if not isinstance(cfg, UpsamplerConfig):
        cfg = UpsamplerConfig(**cfg)
    if not isinstance(srt_cfg, SRTConfig):
        srt_cfg = SRTConfig(**(srt_cfg or {}))
    p = backbone.patch_size
    cfg.validate(patch_size=p, srt=srt_cfg)
    if cfg.method == "srt":
        raise UserError("upsampler.method=srt is srt.build_extractor(backbone, srt_config); build that instead")
    stride = cfg.stride or max(p // 2, 1)
    if cfg.method in ("srt_dense", "shift_jitter", "stride_srt"):
        fn, cell = (StrideReducedViT(backbone, stride), stride) if cfg.method == "stride_srt" else (backbone, p)
        shift = {
            f.name: getattr(srt_cfg, f.name)
            for f in dataclasses.fields(SRTConfig)
            if f.name not in ("method", "output", "stride", "jitter_passes", "jitter_strength")
        }
        if cfg.method == "shift_jitter":
            ensemble = ShiftJitterEnsemble(
                fn, **shift, patch_size=cell, jitter_strength=srt_cfg.jitter_strength, progress=progress
            )
            if srt_cfg.jitter_passes not in (None, ensemble.passes):
                raise UserError(
                    f"srt.jitter_passes={srt_cfg.jitter_passes} does not match the {ensemble.passes} shifted passes of "
                    "upsampler=shift_jitter (each pass is shifted and jittered); leave it null"
                )
        else:
            ensemble = StochasticResonance(fn, **shift, patch_size=cell, progress=progress)
        return EnsembleFine(backbone, ensemble, stride, cfg.method, cfg.measure)
    if cfg.method in ("nearest", "bilinear"):
        return InterpolatedFine(backbone, backbone, p, stride, cfg.method, cfg.method, cfg.measure)
    if cfg.method == "jitter":
        jitter_cfg = dataclasses.replace(srt_cfg, method="jitter", output="pooled", stride=None)
        jitter = build_extractor(backbone, jitter_cfg, progress)
        return InterpolatedFine(backbone, jitter, p, stride, cfg.interpolation, "jitter", cfg.measure)
    if cfg.method == "stride":
        return InterpolatedFine(
            backbone, StrideReducedViT(backbone, stride), stride, stride, None, "stride", cfg.measure
        )
    hub = HubUpsampler(
        cfg.method, backbone.name, cfg.hub_entry, cfg.hub_dir, cfg.hub_signature, cfg.hub_kwargs, cfg.hub_output
    )
    return LearnedFine(backbone, hub, stride, cfg.measure)


__all__ = [
    "Cost",
    "EnsembleFine",
    "FineFeatures",
    "HUB_PROJECTS",
    "HubProject",
    "HubUpsampler",
    "HubUpsamplerUnavailableError",
    "InterpolatedFine",
    "LearnedFine",
    "Meter",
    "ShiftJitterEnsemble",
    "StrideError",
    "StrideReducedViT",
    "build_upsampler",
    "cubic_axis_weights",
    "divisors",
    "find_hub_repo",
    "locate_hub_upsampler",
    "process_peak_rss_mib",
    "vit_pass_macs",
]
