"""Every way of getting a feature field finer than a ViT's token grid, behind one interface, with its cost.

The method itself is :class:`srt.StochasticResonance`; this subpackage holds the alternatives it is compared
with, and is optional (nothing in srt's core imports it):

- :mod:`srt.upsamplers.methods`: SRT dense, nearest, bilinear, stride reduction, SRT on stride reduction, the
  colour-jitter and shift+jitter ensembles, their cost models and the time/memory meter;
- :mod:`srt.upsamplers.hub`: learned upsamplers (FeatUp, LoftUp, JAFAR, AnyUp, NAF) through ``torch.hub``.

:func:`build_upsampler` builds any of them from an :class:`srt.config.UpsamplerConfig` (``upsampler=`` in the
runner); docs/fine-features.md compares them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..backbones import Backbone
from ..config import SRTConfig, UpsamplerConfig
from ..errors import UserError
from ..resonance import StochasticResonance, build_extractor
from .hub import (
    HUB_PROJECTS,
    HubProject,
    HubUpsampler,
    HubUpsamplerUnavailableError,
    LearnedFine,
    find_hub_repo,
    locate_hub_upsampler,
)
from .methods import (
    Cost,
    EnsembleFine,
    FineFeatures,
    InterpolatedFine,
    Meter,
    ShiftJitterEnsemble,
    StrideError,
    StrideReducedViT,
    cubic_axis_weights,
    divisors,
    process_peak_rss_mib,
    vit_pass_macs,
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
