"""Stochastic Resonance Transformer: sub-token ViT features by ensembling shifted passes.

import srt
bb = srt.load_backbone("dino_vits16")                 # frozen timm ViT -> dict of token grids
sr = srt.StochasticResonance(bb, level=3)             # same call, SRT-ensembled outputs
feats = sr(images)["tokens"]                           # [B,C,H/16,W/16], drop-in for bb(images)["tokens"]
fine = sr.dense(images, stride=4)["tokens"]            # [B,C,H/4,W/4]
up = srt.build_upsampler(bb, {"method": "stride", "stride": 4})  # the other ways to fine features, same interface

The names below are imported on first use: ``import srt`` (and ``srt.io``, ``srt.config``, ``srt.registry``) stays free of
torch and timm, so the metric and table CLIs in ``eval/`` that write files through :mod:`srt.io` start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import BackboneConfig, SRTConfig, UpsamplerConfig
from .errors import MissingFileError, UserError, WeightsUnavailableError

#: public name -> the submodule that defines it
_LAZY = {
    "BACKBONES": "registry",
    "Backbone": "backbones",
    "load_backbone": "backbones",
    "model_info": "backbones",
    "ModelInfo": "backbones",
    "JitterEnsemble": "resonance",
    "StochasticResonance": "resonance",
    "build_extractor": "resonance",
    "ShiftSet": "shifts",
    "make_shifts": "shifts",
    "shift_image": "shifts",
    "FineFeatures": "upsamplers",
    "ShiftJitterEnsemble": "upsamplers",
    "StrideReducedViT": "upsamplers",
    "build_upsampler": "upsamplers",
}
_SUBMODULES = (
    "aggregate",
    "backbones",
    "config",
    "errors",
    "io",
    "reference",
    "registry",
    "resonance",
    "shifts",
    "upsamplers",
    "viz",
    "weights",
)

if TYPE_CHECKING:  # what static tools see; at run time __getattr__ imports these on first use
    from . import errors, io, upsamplers, viz
    from .backbones import Backbone, ModelInfo, load_backbone, model_info
    from .registry import BACKBONES
    from .resonance import JitterEnsemble, StochasticResonance, build_extractor
    from .shifts import ShiftSet, make_shifts, shift_image
    from .upsamplers import FineFeatures, ShiftJitterEnsemble, StrideReducedViT, build_upsampler


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'srt' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBMODULES})


__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneConfig",
    "FineFeatures",
    "JitterEnsemble",
    "MissingFileError",
    "ModelInfo",
    "SRTConfig",
    "ShiftJitterEnsemble",
    "ShiftSet",
    "StochasticResonance",
    "StrideReducedViT",
    "UpsamplerConfig",
    "UserError",
    "WeightsUnavailableError",
    "build_extractor",
    "build_upsampler",
    "errors",
    "io",
    "load_backbone",
    "make_shifts",
    "model_info",
    "shift_image",
    "upsamplers",
    "viz",
]
__version__ = "0.1.0"
