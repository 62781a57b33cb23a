"""Stochastic Resonance Transformer: sub-token ViT features by ensembling shifted passes.

import srt
bb = srt.load_backbone("dino_vits16")                 # frozen timm ViT -> dict of token grids
sr = srt.StochasticResonance(bb, level=3)             # same call, SRT-ensembled outputs
feats = sr(images)["tokens"]                           # [B,C,H/16,W/16], drop-in for bb(images)["tokens"]
fine = sr.dense(images, stride=4)["tokens"]            # [B,C,H/4,W/4]
"""

from . import viz
from .backbones import BACKBONES, Backbone, WeightsUnavailableError, load_backbone
from .config import BackboneConfig, SRTConfig
from .resonance import JitterEnsemble, StochasticResonance, build_extractor
from .shifts import ShiftSet, make_shifts, shift_image

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneConfig",
    "JitterEnsemble",
    "SRTConfig",
    "ShiftSet",
    "StochasticResonance",
    "WeightsUnavailableError",
    "build_extractor",
    "load_backbone",
    "make_shifts",
    "shift_image",
    "viz",
]
__version__ = "0.1.0"
