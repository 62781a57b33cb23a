"""NYU-v2 monocular depth with DINOv2's frozen depth heads, plain or with SRT (paper Table 2; PROTOCOLS.md 1.6, 2.2).

The depther (:class:`Depther`) is DINOv2's ``DepthEncoderDecoder.whole_inference``: the image, centre-padded with
zeros to a multiple of the patch size (DINOv2's ``CenterPadding`` pre-hook), goes through the backbone; the patch
tokens and CLS after the head's blocks (``block{k}`` and ``block{k}_cls``: *no* final norm, as the depthers' call
``get_intermediate_layers(..., norm=False)``) go through the head (:mod:`tasks.depth_heads`); the depth is
clamped to [0.001, 10] m and resized bilinearly (align_corners=False) to the image. Three methods:

- baseline (``srt.level=0``): that, once;
- +SRT (``srt.level=L``): SRT on the features the head reads (pooled back to the token grid; CLS plainly averaged),
  then the head once. The official code shifts the image *before* the centre padding (the shift's zero fill and
  the padding's zeros, both in normalised space). SRT here runs over :class:`PaddedFeatures`, a callable on a
  canvas that holds the padded image: whatever a shift moves outside the image region is zeroed again before the
  backbone sees it, which is exactly shift-then-pad. Features are un-shifted on the 14-px token grid;
  ``task.official_unshift_16=true`` reproduces the official default ``--patch_size 16``, which un-shifts on a 16-px
  grid (a shift of s px is undone as 14 s / 16 px): the canvas is then the padded image in the top-left corner
  of an (h*16, w*16) frame, so the same SRT code un-shifts by 16-px cells;
- +OE (``task.output_ensemble=true``): the paper's output-ensemble baseline, the same shifts applied to the whole
  depther and the depth maps shifted back and averaged (zero-filled borders count, as in the official code):
  ``srt.StochasticResonance(DepthOutput(depther))``.

Protocols (``task.protocol``, metrics in :mod:`eval.depth`): ``toolbox`` (default: DINOv2's evaluation, split file,
Eigen crop, no scaling, horizontal-flip averaging as DINOv2's config) or ``srt`` (the SRT repository's: sorted
folders, median scaling, no flip; ``task.srt_literal_mask=true`` adds its row-indexing bug). ``task.flip`` null
picks the protocol's reference choice.

Outputs under the run directory: ``depth_predictions/<item id>.png`` (16-bit, millimetres; these are also the
per-image cache, so an interrupted run resumes, and ``python -m eval.depth --pred-dir`` rescores them),
``depth_visualizations/<item id>.png`` for the first ``task.n_visualizations`` images (titled panels input |
ground truth | prediction | |error| under a title naming the run and its weights; depth colour scale shared by
GT and prediction, colour bars in metres, black = no ground truth) and
``per_image.csv``.

Cost model (T = SRT passes, F = 2 with flip else 1; per 480x640 image with ViT-S/14: backbone ~70 GFLOP, linear
head ~10, DPT head ~420, :mod:`tasks.depth_heads`): baseline F backbone+head passes; +SRT F*T backbone passes (in
chunks of ``srt.batch_size``) plus F head passes and the pooled SRT aggregation, O(16 C h w) per pass and block;
+OE F*T backbone+head passes (chunks of ``task.oe_batch_size``: a DPT head at 480x640 holds ~0.3 GB of activations
per image) plus a per-pixel accumulation. With DPT the head dominates, so +SRT costs a fraction of +OE.
``scripts/bench_depth.py`` measures the ratios.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import srt
from eval import depth as depth_eval
from srt import viz
from srt.errors import UserError
from srt.io import atomic_save_png, atomic_write_text, check_image, read_image

from .base import DataFiles, FeatureExtractor, RunContext, Task, check_each
from .depth_heads import (
    HEADS,
    NYU_DEPTH_RANGE,
    DepthHead,
    build_head,
    head_blocks,
    load_head_weights,
    official_head_file,
    resolve_head_checkpoint,
)

log = logging.getLogger(__name__)

#: the depth protocols' image normalisation (0-255 scale; equal to ImageNet's mean/std x 255)
DEPTH_MEAN = (123.675, 116.28, 103.53)
DEPTH_STD = (58.395, 57.12, 57.375)
#: grid on which the official code un-shifts features by default (its --patch_size default)
OFFICIAL_UNSHIFT_GRID = 16


def block_outputs(blocks: Sequence[int]) -> tuple[str, ...]:
    """Backbone outputs the head reads: patch tokens and CLS after each block, without the final norm."""
    return tuple(name for k in blocks for name in (f"block{k}", f"block{k}_cls"))


def center_pad(images: torch.Tensor, multiple: int) -> torch.Tensor:
    """DINOv2's CenterPadding: zeros up to the next multiple, the odd pixel at the bottom / right."""
    pads = []
    for size in (images.shape[-1], images.shape[-2]):  # F.pad order: last dim first
        extra = -size % multiple
        pads += [extra // 2, extra - extra // 2]
    return F.pad(images, pads)


class Depther(nn.Module):
    """Backbone + head = DINOv2's depther ``whole_inference``: centre padding, blocks, head, clamp, bilinear resize."""

    def __init__(self, backbone: srt.Backbone, head: DepthHead, blocks: Sequence[int]):
        super().__init__()
        self.backbone, self.head, self.blocks = backbone, head, tuple(blocks)
        self.patch_size = backbone.patch_size
        self.name = backbone.name
        self.outputs = block_outputs(self.blocks)
        missing = set(self.outputs) - set(backbone.outputs)
        if missing:
            raise ValueError(f"the backbone does not return {sorted(missing)}; call backbone.set_outputs(...) first")

    def decode(self, features: Mapping[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Depth [B,1,H,W] in metres from the backbone's block outputs (SRT-ensembled or not)."""
        feats = [(features[f"block{k}"], features[f"block{k}_cls"]) for k in self.blocks]
        depth = self.head(feats).clamp(self.head.min_depth, self.head.max_depth)
        return F.interpolate(depth, size=tuple(size), mode="bilinear", align_corners=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.backbone(center_pad(images, self.patch_size)), images.shape[-2:])


class PaddedFeatures:
    """The backbone's block outputs for one image size, shifted by SRT *before* DINOv2's centre padding.

    Called on a canvas: the centre-padded image at the top-left of an (h*q, w*q) frame (h x w tokens; q = the
    grid the features are un-shifted on: the patch size, or 16 for the official default). SRT shifts the canvas;
    this crops the padded frame and zeroes it outside the image region (the official zero fill of the shift,
    then the zero padding), so the backbone sees exactly what the official code feeds it, and the [B,C,h,w]
    grids it returns have stride q on the canvas."""

    def __init__(self, backbone: srt.Backbone, image_hw: tuple[int, int], grid: int):
        self.backbone, self.patch_size = backbone, grid
        self.name, self.mean, self.std = backbone.name, backbone.mean, backbone.std
        p = backbone.patch_size
        H, W = image_hw
        self.padded_hw = (H + (-H % p), W + (-W % p))
        top, left = (-H % p) // 2, (-W % p) // 2
        self.region = (slice(top, top + H), slice(left, left + W))
        self.canvas_hw = (self.padded_hw[0] // p * grid, self.padded_hw[1] // p * grid)

    def canvas(self, images: torch.Tensor) -> torch.Tensor:
        """The canvas of unshifted images [B,3,H,W]."""
        padded = center_pad(images, self.backbone.patch_size)
        Hc, Wc = self.canvas_hw
        return F.pad(padded, (0, Wc - padded.shape[-1], 0, Hc - padded.shape[-2]))

    def __call__(self, canvas: torch.Tensor) -> dict[str, torch.Tensor]:
        Hp, Wp = self.padded_hw
        frame = torch.zeros_like(canvas[..., :Hp, :Wp])
        frame[..., self.region[0], self.region[1]] = canvas[..., self.region[0], self.region[1]]
        return self.backbone(frame)


class DepthOutput:
    """The whole depther as an SRT callable ({"depth": [B,1,H,W]}, stride 1): the +OE baseline."""

    def __init__(self, depther: Depther):
        self.depther = depther
        self.patch_size, self.name = depther.patch_size, depther.name
        self.mean, self.std = depther.backbone.mean, depther.backbone.std

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"depth": self.depther(images)}


def normalise(rgb: np.ndarray) -> torch.Tensor:
    """uint8 [H,W,3] RGB -> [1,3,H,W] float, normalised as the depth protocols do."""
    x = torch.from_numpy(np.array(rgb, dtype=np.float32)).permute(2, 0, 1)
    mean = torch.tensor(DEPTH_MEAN).view(3, 1, 1)
    std = torch.tensor(DEPTH_STD).view(3, 1, 1)
    return ((x - mean) / std)[None]


def read_rgb(path: Path, protocol: str) -> np.ndarray:
    """RGB uint8 [H,W,3] by the project's one reader (:func:`srt.io.read_image`). The references decode with
    OpenCV (mmcv, toolbox) or PIL (the SRT repository); both give the same pixels for JPEG and PNG (every image
    of the fixtures compared), so ``protocol`` no longer picks a decoder."""
    return np.asarray(read_image(path, "RGB", "image"))  # errors name the file


# ----------------------------------------------------------------------------------------------
# Pictures


PANEL_TITLES = ("input", "ground truth", "prediction", "|error|")


def depth_figure(rgb: np.ndarray, gt: np.ndarray, pred: np.ndarray, title: str = ""):
    """The matplotlib Figure of one image: input | ground truth | prediction | |error|, each panel titled;
    ground truth and prediction on one depth scale (magma_r: near is bright) with one colour bar in metres, the
    error (inferno) with its own; black = no ground truth. ``title`` (the run: backbone, method, weights) on top."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    valid = gt > 0
    vmax = float(max(gt[valid].max() if valid.any() else 0, pred.max(), 1e-3))
    err = np.abs(pred - gt)
    emax = float(err[valid].max()) if valid.any() else 1.0
    depth_cmap, err_cmap = (
        colormaps["magma_r"].with_extremes(bad="black"),
        colormaps["inferno"].with_extremes(bad="black"),
    )
    h, w = gt.shape
    width = max(w / 100, 2.0)  # inches per panel: about the image's own pixels at dpi 100
    fig = Figure(figsize=(4 * width + 1.6, width * h / w + 1.0), dpi=100, layout="constrained")
    axes = fig.subplots(1, 4)
    axes[0].imshow(rgb)
    axes[1].imshow(np.ma.masked_where(~valid, gt), cmap=depth_cmap, vmin=0, vmax=vmax)
    shown = axes[2].imshow(pred, cmap=depth_cmap, vmin=0, vmax=vmax)
    error = axes[3].imshow(np.ma.masked_where(~valid, err), cmap=err_cmap, vmin=0, vmax=emax)
    for ax, name in zip(axes, PANEL_TITLES):
        ax.set_title(name, fontsize=11)
        ax.set_axis_off()
    fig.colorbar(shown, ax=list(axes[1:3]), label="depth (m)", shrink=0.9)
    fig.colorbar(error, ax=axes[3], label="|error| (m)", shrink=0.9)
    if title:
        fig.suptitle(title, fontsize=12)
    return fig


def depth_panel(rgb: np.ndarray, gt: np.ndarray, pred: np.ndarray, title: str = "") -> np.ndarray:
    """:func:`depth_figure` rendered to a uint8 [H,W,3] picture."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(depth_figure(rgb, gt, pred, title))
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def panel_title(backbone: Any, srt_cfg: srt.SRTConfig, cfg: DepthConfig) -> str:
    """What a depth picture shows: protocol, backbone, method, head and the weights (random ones said so)."""
    method = "baseline" if srt_cfg.level == 0 else f"{'+OE' if cfg.output_ensemble else '+SRT'} L={srt_cfg.level}"
    head = f"{cfg.head} head" + (" with RANDOM head weights" if cfg.head_weights == "random" else "")
    weights = viz.weights_caption(getattr(backbone, "weights", ""))
    return f"NYU-v2 depth ({cfg.protocol} protocol): {backbone.name}, {method}, {head}; {weights}"


# ----------------------------------------------------------------------------------------------
# The task


@dataclass
class DepthConfig:
    """Settings of ``task=depth`` (conf/task/depth.yaml only says where the data lies)."""

    # toolbox: DINOv2's evaluation (split file, Eigen crop, 1e-3 < gt < 10, no scaling, metres = PNG / 1000) |
    # srt: the SRT repository's (testing/{images,depths}, median scaling, no crop, metres = PNG / 256), Table 2's
    protocol: str = "toolbox"
    toolbox_root: str = "???"  # protocol toolbox: <root>/<split> and the files it lists
    srt_root: str = "???"  # protocol srt: <root>/testing/images/*.png and <root>/testing/depths/*.png
    split: str = depth_eval.DEFAULT_SPLIT  # protocol toolbox: the split file under toolbox_root
    head: str = "linear"  # linear (last block) | linear4 (4 blocks) | dpt (4 blocks): DINOv2's NYU heads
    # official: dinov2_<arch>_nyu_<head>_head.pth from $TORCH_HOME/hub/checkpoints (downloaded when reachable) |
    # /path/to/head.pth | random (explicitly random weights, warned: tests, demo)
    head_weights: str = "official"
    blocks: Optional[list[int]] = None  # blocks the head reads (0-based); null = DINOv2's for 12/24/40-block models
    flip: Optional[bool] = None  # horizontal-flip averaging; null = the protocol's choice (toolbox yes, srt no)
    output_ensemble: bool = False  # +OE: SRT's shifts on the whole depther, depth maps averaged
    official_unshift_16: bool = False  # un-shift SRT features on a 16-px grid (the official code's default)
    srt_literal_mask: bool = False  # protocol srt: score with the published integer-mask bug (rows 0-1 only)
    oe_batch_size: Optional[int] = 4  # +OE: (image, shift) pairs per depther call (DPT: ~0.3 GB each); null = srt's
    max_images: Optional[int] = None  # first n images only (quick checks); null = all
    # a depth map without a valid pixel under the protocol (or whose metrics are NaN) stops the run, naming it;
    # true: it is excluded from the metrics and counted (n_excluded; the ids in metrics.json and the log)
    skip_invalid: bool = False
    n_visualizations: int = 4  # colour-mapped input | GT | prediction | error pictures of the first n images
    predictions_dir: str = "depth_predictions"  # under the run directory: <item id>.png, uint16 mm (the cache)
    visualizations_dir: str = "depth_visualizations"

    @property
    def root(self) -> str:
        return self.toolbox_root if self.protocol == "toolbox" else self.srt_root

    @property
    def use_flip(self) -> bool:
        return self.flip if self.flip is not None else self.protocol == "toolbox"

    def validate(self) -> DepthConfig:
        if self.protocol not in depth_eval.PROTOCOLS:
            raise UserError(
                f"task.protocol={self.protocol!r} is not valid; expected one of {', '.join(depth_eval.PROTOCOLS)}"
            )
        if self.head not in HEADS:
            raise UserError(f"task.head={self.head!r} is not valid; expected one of {', '.join(HEADS)}")
        if self.root in ("", "???"):
            raise UserError(f"task.{self.protocol}_root is not set; expected the NYU-v2 folder of that layout")
        if self.srt_literal_mask and self.protocol != "srt":
            raise UserError("task.srt_literal_mask=true is a bug of the srt protocol; it needs task.protocol=srt")
        if self.official_unshift_16 and self.output_ensemble:
            raise UserError(
                "task.official_unshift_16 changes how SRT un-shifts features; the output ensemble "
                "(task.output_ensemble=true) un-shifts depth maps pixel by pixel and has no such grid"
            )
        if self.oe_batch_size is not None and self.oe_batch_size < 1:
            raise UserError(f"task.oe_batch_size={self.oe_batch_size} is not valid; expected null or >= 1")
        if self.max_images is not None and self.max_images < 1:
            raise UserError(f"task.max_images={self.max_images} is not valid; expected null or >= 1")
        if self.n_visualizations < 0:
            raise UserError(f"task.n_visualizations={self.n_visualizations} is not valid; expected >= 0")
        return self


def _srt_setup(extractor: FeatureExtractor) -> tuple[srt.Backbone, srt.SRTConfig]:
    """The backbone and the SRT settings of the extractor run.py built (the task builds its own SRT on them)."""
    if isinstance(extractor, srt.Backbone):
        return extractor, srt.SRTConfig(level=0)
    backbone, cfg = getattr(extractor, "wrapped", None), getattr(extractor, "config", None)
    if isinstance(extractor, srt.JitterEnsemble):
        raise UserError("task depth supports srt.method=shift (baseline, +SRT, +OE); Table 2 has no jitter ensemble")
    if not isinstance(backbone, srt.Backbone) or not isinstance(cfg, srt.SRTConfig):
        raise TypeError(
            f"task depth needs an srt.Backbone or srt.StochasticResonance around one; got {type(extractor).__name__}"
        )
    check_srt_settings(cfg)
    return backbone, cfg


def check_srt_settings(cfg: srt.SRTConfig) -> None:
    """The SRT settings the depth protocol supports (before any model, and again on the extractor it gets)."""
    if cfg.method == "jitter":
        raise UserError("task depth supports srt.method=shift (baseline, +SRT, +OE); Table 2 has no jitter ensemble")
    if cfg.output != "pooled":
        raise UserError("task depth feeds token grids to the head: srt.output must be pooled")
    if cfg.at_block is not None:
        raise UserError("task depth does not support srt.at_block (SRT runs on the blocks the head reads)")
    if cfg.fill != "zero":
        raise UserError(
            f"srt.fill={cfg.fill!r}: task depth reproduces the official shift before DINOv2's zero padding, which "
            "fills with zeros; expected srt.fill=zero"
        )


@dataclass
class _Predictions:
    """What the item loop gathered: per scored image its id, ground truth, prediction and seconds; the excluded."""

    ids: list[str] = dataclasses.field(default_factory=list)
    gts: list[np.ndarray] = dataclasses.field(default_factory=list)
    preds: list[np.ndarray] = dataclasses.field(default_factory=list)
    seconds: list[float] = dataclasses.field(default_factory=list)
    excluded: dict[str, str] = dataclasses.field(default_factory=dict)

    def add(self, item_id: str, gt: np.ndarray, pred: np.ndarray, seconds: float) -> None:
        self.ids.append(item_id)
        self.gts.append(gt)
        self.preds.append(pred)
        self.seconds.append(seconds)


class DepthTask(Task):
    """NYU-v2 depth with DINOv2 heads; baseline, +SRT and +OE; two protocols (see the module docstring)."""

    name: ClassVar[str] = "depth"
    Config: ClassVar[type] = DepthConfig
    #: what run.py loads; the task asks the backbone for the blocks its head reads (block_outputs)
    outputs: ClassVar[tuple[str, ...]] = ("block-1", "block-1_cls")
    data_location_settings: ClassVar[tuple[str, ...]] = ("toolbox_root", "srt_root")

    def items(self) -> list[depth_eval.DepthItem]:
        cfg: DepthConfig = self.cfg
        return depth_eval.list_items(cfg.root, cfg.protocol, cfg.split)[: cfg.max_images]

    def data_files(self) -> DataFiles:
        """The protocol's files: the split file (toolbox), every image and depth map the run reads."""
        cfg: DepthConfig = self.cfg
        items = self.items()
        paths = [p for it in items for p in (it.image, it.depth)]
        if cfg.protocol == "toolbox":
            paths.append(Path(cfg.root) / cfg.split)
        return DataFiles.under(f"NYU-v2 ({cfg.protocol} layout)", cfg.root, paths)

    def check_settings(self, model: srt.ModelInfo, srt_cfg: srt.SRTConfig) -> None:
        """The SRT settings the depth protocol supports and the head's blocks against the model's depth, before any
        model is built; remembers the backbone's name for the head checkpoint (:meth:`check_data`)."""
        cfg: DepthConfig = self.cfg
        check_srt_settings(srt_cfg)
        head_blocks(cfg.head, model.depth, cfg.blocks)  # names task.blocks when they do not fit the model
        if cfg.head_weights == "official":
            official_head_file(model.name, cfg.head)  # names the backbones DINOv2 publishes heads for
        self._backbone_name, self._embed_dim = model.name, model.embed_dim

    def check_data(self) -> None:
        """Every depth map decoded in full (16-bit single channel, at least one valid pixel under the protocol unless
        ``task.skip_invalid``), every image checked whole
        (:func:`srt.io.check_image`) and of its depth map's size; then the head checkpoint is located (downloaded
        if the host is reachable), read safely and loaded into the configured head, so that a missing, foreign or
        mis-shaped head is named before the backbone is built."""
        cfg: DepthConfig = self.cfg

        def check(item: depth_eval.DepthItem) -> None:
            gt = depth_eval.read_depth(item.depth, cfg.protocol)
            width, height = check_image(item.image, "image")
            if gt.shape != (height, width):
                raise UserError(
                    f"image {item.image} is {width}x{height} but its depth map {item.depth} is "
                    f"{gt.shape[1]}x{gt.shape[0]}; expected the same size"
                )
            problem = depth_eval.ground_truth_problem(gt, cfg.protocol, str(item.depth))
            if problem is not None and not cfg.skip_invalid:
                raise depth_eval.InvalidGroundTruthError(f"{problem}; task.skip_invalid=true excludes and counts it")

        check_each(self.items(), check, "NYU-v2 images and depth maps")
        name = getattr(self, "_backbone_name", None)
        if cfg.head_weights != "random" and name is not None:
            path = resolve_head_checkpoint(name, cfg.head, cfg.head_weights)
            # read safely and checked (keys, shapes) against the configured head, before the backbone is built
            load_head_weights(build_head(cfg.head, self._embed_dim, NYU_DEPTH_RANGE), path, name)

    def cache_key_config(self) -> Mapping[str, Any]:
        keep = dataclasses.asdict(self.cfg)
        scoring_only = ("srt_literal_mask", "max_images", "n_visualizations", "visualizations_dir", "skip_invalid")
        for key in scoring_only:
            keep.pop(key)
        return keep

    # -- models ------------------------------------------------------------------------------------

    def build_depther(self, backbone: srt.Backbone, device: torch.device) -> Depther:
        cfg: DepthConfig = self.cfg
        blocks = head_blocks(cfg.head, backbone.depth, cfg.blocks)
        backbone.set_outputs(block_outputs(blocks))
        if cfg.head_weights == "random":
            warnings.warn(
                "task.head_weights=random: the depth head has RANDOM weights (seed 0); its numbers only prove that "
                "the pipeline runs",
                stacklevel=2,
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                head = build_head(cfg.head, backbone.embed_dim, NYU_DEPTH_RANGE)
        else:
            head = build_head(cfg.head, backbone.embed_dim, NYU_DEPTH_RANGE)
            path = resolve_head_checkpoint(backbone.name, cfg.head, cfg.head_weights)
            load_head_weights(head, path, backbone.name)
            log.info("depth head: %s", path)
        return Depther(backbone, head.eval().requires_grad_(False), blocks).to(device)

    def predictor(self, depther: Depther, srt_cfg: srt.SRTConfig):
        """images [1,3,H,W] -> depth [1,1,H,W] for the configured method (before flip averaging)."""
        cfg: DepthConfig = self.cfg
        if srt_cfg.level == 0:
            return depther
        if cfg.output_ensemble:
            oe_cfg = dataclasses.replace(srt_cfg, batch_size=cfg.oe_batch_size or srt_cfg.batch_size)
            ensemble = srt.build_extractor(DepthOutput(depther), oe_cfg)
            return lambda images: ensemble(images)["depth"]
        grid = OFFICIAL_UNSHIFT_GRID if cfg.official_unshift_16 else depther.patch_size

        def srt_features(images: torch.Tensor) -> torch.Tensor:
            fn = PaddedFeatures(depther.backbone, tuple(images.shape[-2:]), grid)
            feats = srt.build_extractor(fn, srt_cfg)(fn.canvas(images))
            return depther.decode(feats, images.shape[-2:])

        return srt_features

    # -- run ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def run(self, extractor: FeatureExtractor, ctx: RunContext) -> dict[str, float]:
        cfg: DepthConfig = self.cfg
        backbone, srt_cfg = _srt_setup(extractor)
        infer = self.inference(backbone, srt_cfg, ctx.device)
        if cfg.srt_literal_mask:
            msg = (
                "task.srt_literal_mask=true: scoring with the published integer-mask bug of the SRT repository "
                "(only image rows 0 and 1 are scored); these numbers reproduce that code, not a depth metric"
            )
            warnings.warn(msg, stacklevel=2)
            log.warning(msg)
        done = self._predict_all(self.items(), infer, ctx, panel_title(backbone, srt_cfg, cfg))
        ctx.cache.items_done()  # a shard run stops here
        return self._score(done, Path(ctx.out_dir), getattr(extractor, "passes", 1))

    def inference(self, backbone: srt.Backbone, srt_cfg: srt.SRTConfig, device: torch.device):
        """images [1,3,H,W] -> depth [1,1,H,W] of the configured method, flip-averaged when the protocol flips."""
        predict = self.predictor(self.build_depther(backbone, device), srt_cfg)

        def infer(x: torch.Tensor) -> torch.Tensor:
            depth = predict(x)
            if self.cfg.use_flip:  # DINOv2's aug_test: the mean of the prediction and the flipped one of the flip
                depth = (depth + predict(x.flip(-1)).flip(-1)) / 2
            return depth

        return infer

    def _predict_all(self, items: list[depth_eval.DepthItem], infer, ctx: RunContext, title: str) -> _Predictions:
        """Every item of this run (shard) predicted or loaded from its stored prediction; depth maps without a
        valid pixel are excluded (``task.skip_invalid``; otherwise check_data stopped on them). ``title`` names the
        run in the pictures of the first ``task.n_visualizations`` images."""
        cfg: DepthConfig = self.cfg
        done = _Predictions()
        for n, item in enumerate(tqdm(items, desc=f"depth {cfg.protocol}", disable=not ctx.progress)):
            if ctx.cache.skips(item.id):  # another shard's image (shard=i/n)
                continue
            gt = depth_eval.read_depth(item.depth, cfg.protocol)
            problem = depth_eval.ground_truth_problem(gt, cfg.protocol, str(item.depth))
            if problem is not None:
                if not cfg.skip_invalid:
                    raise depth_eval.InvalidGroundTruthError(f"{problem}; task.skip_invalid=true excludes it")
                done.excluded[item.id] = problem
                continue
            rgb = read_rgb(item.image, cfg.protocol)
            if gt.shape != rgb.shape[:2]:  # check_data compared the headers; this is the decoded data
                raise UserError(f"image {item.image} is {rgb.shape[:2]} but its depth map {item.depth} is {gt.shape}")
            pred, seconds = self._prediction(item, rgb, infer, ctx)
            done.add(item.id, gt, pred, seconds)
            if n < cfg.n_visualizations:
                vis_path = Path(ctx.out_dir) / cfg.visualizations_dir / f"{item.id}.png"
                atomic_save_png(vis_path, depth_panel(rgb, gt, pred, f"{item.id}: {title}"))
        return done

    def _prediction(
        self, item: depth_eval.DepthItem, rgb: np.ndarray, infer, ctx: RunContext
    ) -> tuple[np.ndarray, float]:
        """The stored prediction of ``item`` (computed and stored first when it is not cached) and its seconds."""
        png = Path(ctx.out_dir) / self.cfg.predictions_dir / f"{item.id}.png"

        def compute() -> dict[str, float]:
            t0 = time.perf_counter()
            depth = infer(normalise(rgb).to(ctx.device))[0, 0].float().cpu().numpy()
            atomic_save_png(png, depth_eval.depth_to_png(depth))  # first the prediction, then the cache entry
            return {"seconds": time.perf_counter() - t0}

        pred = None
        if item.id in ctx.cache:
            try:
                pred = depth_eval.read_prediction_png(png)
            except (FileNotFoundError, ValueError) as e:  # cache entry without a usable prediction: redo it
                log.warning("%s; recomputing it", e)
                ctx.cache.path(item.id).unlink(missing_ok=True)
        meta = ctx.cache.get_or_compute(item.id, compute)
        if pred is None:
            pred = depth_eval.read_prediction_png(png)  # scored as stored, so a resumed run scores the same
        return pred, float(meta["seconds"])

    def _score(self, done: _Predictions, out_dir: Path, extractor_passes: int) -> dict[str, float]:
        """The metrics over the scored images; excluded ones counted, named in the log and in metrics.json."""
        cfg: DepthConfig = self.cfg
        if not done.ids:
            raise depth_eval.InvalidGroundTruthError(
                f"all {len(done.excluded)} images were excluded; first: {next(iter(done.excluded.values()))}"
            )
        result = depth_eval.evaluate(
            done.gts, done.preds, cfg.protocol, cfg.srt_literal_mask, ids=done.ids, skip_invalid=cfg.skip_invalid
        )
        excluded = {**done.excluded, **result["excluded"]}
        for item_id, why in excluded.items():
            log.warning("depth: excluded %s from the metrics (task.skip_invalid=true): %s", item_id, why)
        self._notes = {"excluded_images": excluded} if excluded else {}
        self._write_per_image(out_dir / "per_image.csv", result["ids"], result["per_image"])
        passes = extractor_passes * (2 if cfg.use_flip else 1)
        scored = set(result["ids"])
        seconds = [s for i, s in zip(done.ids, done.seconds) if i in scored]
        return {
            **result["mean"],
            "n_images": float(result["n_images"]),
            "n_excluded": float(len(excluded)),
            "passes_per_image": float(passes),
            "seconds_per_image": float(np.mean(seconds)),
        }

    def record_notes(self) -> dict[str, Any]:
        return dict(getattr(self, "_notes", {}))

    @staticmethod
    def _write_per_image(path: Path, ids: list[str], per_image: list[dict[str, float]]) -> None:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        names = list(per_image[0])
        writer.writerow(["image", *names])
        for item_id, m in zip(ids, per_image):
            writer.writerow([item_id, *(f"{m[k]:.6g}" for k in names)])
        atomic_write_text(path, buf.getvalue())
