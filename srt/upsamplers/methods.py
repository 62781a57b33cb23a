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
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..backbones import Backbone
from ..errors import UserError
from ..registry import PosEmbedResampling
from ..resonance import ColourJitter, StochasticResonance


class StrideError(UserError):
    """A method was asked for an output stride it cannot produce."""


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
