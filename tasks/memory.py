"""Memory before work: the peak a run will need, estimated from its settings before any model is built.

The runner calls :func:`check_memory` after the data checks: a run whose estimate exceeds the memory this machine
has available (``MemAvailable`` of /proc/meminfo; a CUDA device's free memory) stops with the estimate, what is
available and the setting that would shrink it; ``check_memory=false`` runs it anyway.

Cost model (float32, one image at a time; N = tokens of one pass, C = width, D = depth, s = output stride):

- weights: 12 D C^2 x 4 bytes (the linear layers; embeddings are small);
- one forward pass: about 20 N C x 4 bytes live at once (the residual stream, q/k/v, the MLP's 4C hidden and its
  activation); attention runs through PyTorch's fused kernel, which does not hold the N x N matrix;
  SRT runs ``srt.batch_size`` passes together;
- a dense output at stride s: the running sum, the aligned pass being added and (dispersion) the Welford mean
  and M2, each C x H/s x W/s x 4 bytes; the median buffers are bounded by ``srt.median_budget_gb`` already;
- stride reduction at stride s: one pass of (p/s)^2 N tokens.

The estimate is checked against measured peaks (tests/test_memory_estimate.py: within a factor of 2 over the
process's own baseline) on a few sizes; it is a guard against hours of swapping or an OOM kill, not a budget.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Optional

from srt.errors import BudgetError

log = logging.getLogger("srt-bench")

BYTES = 4  # float32
ACTIVATION_FACTOR = 20  # N x C float tensors alive at once in one pass (block temporaries, allocator slack)


@dataclass
class MemoryEstimate:
    """The estimate's parts in bytes, and the setting that shrinks the largest."""

    parts: dict[str, float]
    setting: str

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def describe(self) -> str:
        return ", ".join(f"{k} {_gib(v)}" for k, v in sorted(self.parts.items(), key=lambda kv: -kv[1]) if v > 0)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**29 else f"{n / 2**20:.0f} MiB"


def estimate(model: Any, srt_cfg: Any, upsampler: Any, image_hw: tuple[int, int], dense_stride: Optional[int] = None):
    """The peak memory of one image of size ``image_hw`` through the extractor the settings describe.

    ``model`` is a :class:`srt.backbones.ModelInfo`; ``dense_stride``: the stride of a dense field the task
    itself asks for (``task=visualize``), when the settings do not say it."""
    h, w = image_hw
    p, c, d = model.patch_size, model.embed_dim, model.depth
    tokens = math.ceil(h / p) * math.ceil(w / p)
    passes_at_once = max(1, srt_cfg.batch_size) if srt_cfg.level > 0 or srt_cfg.method == "jitter" else 1
    method = getattr(upsampler, "method", "srt") or "srt"
    parts = {"weights": 12 * d * c * c * BYTES}
    setting = "srt.batch_size"
    stride = dense_stride or (srt_cfg.stride or max(p // 2, 1) if srt_cfg.output == "dense" else None)
    if method != "srt":
        stride = upsampler.stride or max(p // 2, 1)
    if method in ("stride", "stride_srt"):
        tokens *= (p // stride) ** 2
        setting = "upsampler.stride"
    parts["forward passes"] = ACTIVATION_FACTOR * tokens * c * BYTES * (passes_at_once if method != "stride" else 1)
    if stride is not None:
        welford = getattr(srt_cfg, "dispersion", False) or getattr(srt_cfg, "tolerance", None) is not None  # adaptive
        buffers = 2 + (2 if srt_cfg.aggregate == "mean" and welford else 0)
        parts["dense field"] = buffers * c * math.ceil(h / stride) * math.ceil(w / stride) * BYTES
        if parts["dense field"] > parts["forward passes"] and method not in ("stride",):
            setting = "task.stride" if dense_stride else ("upsampler.stride" if method != "srt" else "srt.stride")
    return MemoryEstimate(parts, setting)


def available_bytes(device: Any) -> Optional[float]:
    """Memory this process can still use: a CUDA device's free memory, else the kernel's MemAvailable."""
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        return float(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(est: MemoryEstimate, device: Any, what: str, enabled: bool = True) -> None:
    """Stop (:class:`srt.errors.BudgetError`) when ``est`` exceeds the available memory, unless disabled."""
    free = available_bytes(device)
    log.debug("memory estimate for %s: %s (%s available)", what, _gib(est.total), free and _gib(free))
    if free is None or est.total <= free:
        return
    message = (
        f"{what} needs an estimated {_gib(est.total)} ({est.describe()}), but {device} has {_gib(free)} available; "
        f"reduce {est.setting} (the largest part), or set check_memory=false to run it anyway"
    )
    if not enabled:
        log.warning("check_memory=false: %s", message)
        return
    raise BudgetError(message)
