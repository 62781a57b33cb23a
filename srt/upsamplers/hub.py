"""Learned upsamplers (FeatUp, LoftUp, JAFAR, AnyUp, NAF) through ``torch.hub``, from the local hub cache.

Optional: nothing here is imported unless ``upsampler.method`` names one of them. :class:`HubUpsampler` adapts a
project's published entry point to one call, ``up(features, image, size)``; :class:`LearnedFine` is a plain pass
followed by it, with the interface of every fine-feature method (:mod:`srt.upsamplers.methods`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import MissingFileError, UserError
from .methods import FineFeatures


class HubUpsamplerUnavailableError(MissingFileError):
    """A learned upsampler's torch.hub repository (or its entry point, weights, dependencies) is not available
    locally. The message says what to download and where to put it."""


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
