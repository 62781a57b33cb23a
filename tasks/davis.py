"""DAVIS-2017 semi-supervised video object segmentation by label propagation (paper Table 1, Fig. 3).

The DINO protocol (PROTOCOLS.md section 2.1 and the appendix "DINO DAVIS label propagation"; source
``dino:eval_video_segmentation.py``), re-implemented:

1. frames read with OpenCV, resized (bilinear) so the short side is 480 and the long side floors to a multiple
   of 64 (854x480 -> 832x480; for patch sizes that do not divide this, e.g. DINOv2's 14, both sides floor to
   multiples of p instead: 840x476, see :func:`frame_size`), scaled to [0, 1] and normalised with the ImageNet mean and DINO's std
   (0.228, 0.224, 0.225) -- the 0.228 is inherited from UVC and kept for parity (``task.std``);
2. the first annotation is resized with PIL NEAREST to the token grid and one-hot encoded;
3. every later frame t takes its labels from a context of the first frame plus the ``n_last_frames`` most
   recent frames (their *soft* label maps, never argmaxed), through :func:`propagate`;
4. the soft map is upsampled bilinearly by the feature stride, min-max normalised per channel, argmaxed and
   resized (PIL NEAREST) to the original size, then written as a palette PNG ``<out>/<seq>/<frame>.png``
   (frame 0 is the annotation itself), and the folder is scored by :mod:`eval.davis`.

Features are ``extractor(frame)["tokens"]``: a plain backbone (level 0), the SRT wrapper (pooled: the paper;
``srt.output=dense srt.stride=8``: a grid twice as fine for p=16) or the colour-jitter ensemble. The grid has
``extractor.stride`` pixels per cell, so finer grids need no change here.

Cost of :func:`propagate` per frame (h x w grid taken so that w is the shorter side, n <= n_last_frames + 1
context frames, window radius r, b = 8 target rows per band): targets are processed b rows at a time against
the b + 2r full-width source rows their windows fall in, one matmul per band, so time is
O(n * hw * (b + 2r) * w * C) instead of DINO's O(n * (hw)^2 * C) -- 960 instead of 1560 sources per target
and context frame at p=16 (30x52, r=12), 1920 instead of 6240 at p=8 (60x104). No (hw)^2 mask is built:
the window mask is [b*w, (b + 2r)*w], shared by all context frames. Memory besides the queue (n frames of
(C + K) x hw floats: 19 MB at p=16, 77 MB at p=8 for C=384, K=3) is a row-padded copy of the queue during a
step and one band of candidates, n * b*w * (b + 2r)*w floats (7 MB at p=16, 29 MB at p=8). Timings:
``scripts/bench_davis.py``.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from eval import davis as davis_eval
from srt.backbones import ModelInfo
from srt.config import SRTConfig
from srt.errors import MissingFileError, UserError
from srt.io import atomic_save_png, read_image

from .base import DataFiles, FeatureExtractor, RunContext, Task, check_each

log = logging.getLogger(__name__)

#: DINO's frame normalisation (dino:eval_video_segmentation.py ``color_normalize``; 0.228 is UVC's typo)
DINO_MEAN = (0.485, 0.456, 0.406)
DINO_STD = (0.228, 0.224, 0.225)
#: target rows per band in the windowed affinity (a speed knob only: results do not depend on it)
_BAND_ROWS = 8


# ----------------------------------------------------------------------------------------------------------
# Label propagation (pure torch)
# ----------------------------------------------------------------------------------------------------------
def _check_propagation_settings(
    n_last_frames: int, size_mask_neighborhood: int, topk: int, temperature: float, prefix: str = ""
) -> None:
    """``prefix`` names the settings' group in messages (``task.`` under the runner)."""
    if n_last_frames < 0:
        raise UserError(f"{prefix}n_last_frames={n_last_frames} is not valid; expected an integer >= 0")
    if size_mask_neighborhood < 0:
        raise UserError(
            f"{prefix}size_mask_neighborhood={size_mask_neighborhood} is not valid; expected an integer >= 0 "
            f"(0: no spatial restriction)"
        )
    if topk < 1:
        raise UserError(f"{prefix}topk={topk} is not valid; expected an integer >= 1")
    if not temperature > 0:
        raise UserError(f"{prefix}temperature={temperature} is not valid; expected a number > 0")


class LabelPropagator:
    """Streaming DINO label propagation: feed the frames' token features in order, get soft label maps.

    Holds the first frame (features, one-hot labels) and a queue of the ``n_last_frames`` most recent
    (features, soft labels). Each :meth:`step` propagates to one new frame and pushes it into the queue, so a
    frame's features are computed once and reused while it stays in the context.
    """

    def __init__(
        self,
        first_feat: torch.Tensor,
        first_labels: torch.Tensor,
        n_last_frames: int = 7,
        size_mask_neighborhood: int = 12,
        topk: int = 5,
        temperature: float = 0.1,
    ):
        _check_propagation_settings(n_last_frames, size_mask_neighborhood, topk, temperature)
        if first_feat.ndim != 3 or first_labels.ndim != 3 or first_feat.shape[1:] != first_labels.shape[1:]:
            raise UserError(
                f"expected first_feat [C,h,w] and first_labels [K,h,w] on one grid, got "
                f"{tuple(first_feat.shape)} and {tuple(first_labels.shape)}"
            )
        self.grid = tuple(first_feat.shape[1:])
        self.radius, self.topk, self.temperature = size_mask_neighborhood, topk, temperature
        # Features are stored L2-normalised: DINO normalises context features on every use, same values.
        self._first = (F.normalize(first_feat.float(), dim=0), first_labels.float())
        self._queue: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=n_last_frames or None)
        self._keep_recent = n_last_frames > 0

    def step(self, feat: torch.Tensor) -> torch.Tensor:
        """Soft label map ``[K,h,w]`` of the next frame, from its raw token features ``[C,h,w]``."""
        if feat.ndim != 3 or tuple(feat.shape[1:]) != self.grid or feat.shape[0] != self._first[0].shape[0]:
            raise UserError(
                f"expected features [{self._first[0].shape[0]},{self.grid[0]},{self.grid[1]}], got {tuple(feat.shape)}"
            )
        target = F.normalize(feat.float(), dim=0)
        context = [self._first, *self._queue]
        soft = _propagate_to(
            target,
            torch.stack([c[0] for c in context]),
            torch.stack([c[1] for c in context]),
            self.radius,
            self.topk,
            self.temperature,
        )
        if self._keep_recent:
            self._queue.append((target, soft))
        return soft


def propagate(
    feats: torch.Tensor,
    first_labels: torch.Tensor,
    n_last_frames: int = 7,
    size_mask_neighborhood: int = 12,
    topk: int = 5,
    temperature: float = 0.1,
) -> torch.Tensor:
    """DINO label propagation through a whole clip.

    Args:
        feats: ``[T,C,h,w]`` raw (un-normalised) token features of all frames.
        first_labels: ``[K,h,w]`` one-hot float labels of frame 0 at token resolution.
        n_last_frames: recent frames kept in the context besides the first frame (0: first frame only).
        size_mask_neighborhood: sources restricted to a square window of this radius in tokens (0: no window).
        topk: sources kept per target, jointly over all context frames (values tied with the k-th are kept).
        temperature: affinity exp(cos / temperature).

    Returns:
        ``[T-1,K,h,w]`` soft label maps of frames 1..T-1: exactly the maps kept in the context queue.
    """
    feats, first_labels = torch.as_tensor(feats), torch.as_tensor(first_labels)
    if feats.ndim != 4 or feats.shape[0] < 1:
        raise UserError(f"feats: expected [T,C,h,w] with T >= 1, got {tuple(feats.shape)}")
    prop = LabelPropagator(feats[0], first_labels, n_last_frames, size_mask_neighborhood, topk, temperature)
    out = [prop.step(f) for f in feats[1:]]
    K, (h, w) = first_labels.shape[0], prop.grid
    return torch.stack(out) if out else first_labels.new_zeros((0, K, h, w), dtype=torch.float32)


def _propagate_to(
    target: torch.Tensor, ctx_feats: torch.Tensor, ctx_labels: torch.Tensor, radius: int, topk: int, temperature: float
) -> torch.Tensor:
    """One DINO propagation step. target ``[C,h,w]`` and ctx_feats ``[n,C,h,w]`` are L2-normalised; ctx_labels
    ``[n,K,h,w]``. Returns ``[K,h,w]``.

    DINO's affinity is exp(cos/T) times a window mask, top-k per target over all context sources jointly,
    entries below the k-th zeroed (ties with the k-th kept), columns normalised, labels = the weighted sum.
    exp is increasing, so the selection is made on cos directly; the kept weights are exp((cos - max cos)/T),
    which normalise to the same values without overflowing for small temperatures.
    """
    n, C, h, w = ctx_feats.shape
    K = ctx_labels.shape[1]
    # Bands run along the grid's longer side, so the band width (the waste of the banded matmul) is the shorter.
    transposed = w > h
    if transposed:
        target, ctx_feats, ctx_labels = target.transpose(1, 2), ctx_feats.transpose(2, 3), ctx_labels.transpose(2, 3)
        h, w = w, h
    out = target.new_empty(h * w, K)
    local = 0 < radius and (radius < h - 1 or radius < w - 1)  # else every source is inside every window
    bands = (
        _window_bands(target, ctx_feats, ctx_labels, radius) if local else _global_bands(target, ctx_feats, ctx_labels)
    )
    for rows, cand, band_labels in bands:
        # cand [n, m, B]: cosines of m targets to the B sources of a band in each context frame, -inf where a
        # source is outside the target's window; band_labels [n, B, K]: the sources' soft labels.
        out[rows] = _propagate_band(cand, band_labels, topk, temperature)
    out = out.T.reshape(K, h, w)
    return out.transpose(1, 2).contiguous() if transposed else out


def _propagate_band(cand: torch.Tensor, band_labels: torch.Tensor, topk: int, temperature: float) -> torch.Tensor:
    """DINO's top-k label transfer for ``cand [n, m, B]`` (cosines of m targets to the B sources of n context
    frames; -inf: not a source) and ``band_labels [n, B, K]``. Returns the soft labels ``[m, K]``.

    Per target, every source whose value is >= the k-th largest over all n*B sources is kept (ties with the
    k-th too) with weight exp((value - max)/T); the label is the normalised weighted sum. The joint top-k is
    found from per-frame top-(k+1) lists: if a frame's (k+1)-th value still reaches the joint k-th, that
    frame may hold more tied sources than its list, and only such targets are recomputed over all sources.
    """
    n, m, B = cand.shape
    K = band_labels.shape[2]
    k = min(topk, n * B)
    k_frame = min(k, B)
    listed, listed_idx = cand.topk(min(k_frame + 1, B), dim=2)  # [n, m, k+1] per frame, sorted
    joint = listed[:, :, :k_frame].permute(1, 0, 2).reshape(m, n * k_frame).topk(k, dim=1).values
    kth, top = joint[:, -1], joint[:, 0]  # [m]
    value, index = listed[:, :, :k_frame], listed_idx[:, :, :k_frame]
    weight = torch.exp((value - top[None, :, None]) / temperature) * (value >= kth[None, :, None])
    labels = band_labels.gather(1, index.reshape(n, m * k_frame, 1).expand(n, m * k_frame, K))
    label_sum = (weight[..., None] * labels.reshape(n, m, k_frame, K)).sum(dim=(0, 2))  # [m, K]
    norm = weight.sum(dim=(0, 2))
    if B > k_frame:
        tied = (listed[:, :, k_frame] >= kth[None, :]).any(dim=0).nonzero(as_tuple=True)[0]
        if len(tied):  # e.g. identical features: every source equal to the k-th counts, as in DINO
            c = cand[:, tied]
            w = torch.exp((c - top[tied][None, :, None]) / temperature) * (c >= kth[tied][None, :, None])
            label_sum[tied] = torch.bmm(w, band_labels).sum(dim=0)
            norm[tied] = w.sum(dim=(0, 2))
    return label_sum / norm[:, None]


def _global_bands(target: torch.Tensor, ctx_feats: torch.Tensor, ctx_labels: torch.Tensor, max_elements: int = 1 << 23):
    """No window: every target sees every source. Yields chunks of target rows against the whole grid."""
    n, C, h, w = ctx_feats.shape
    K = ctx_labels.shape[1]
    sources = ctx_feats.reshape(n, C, h * w)
    band_labels = ctx_labels.reshape(n, K, h * w).transpose(1, 2)
    tgt = target.reshape(C, h * w)
    rows_per_chunk = max(1, max_elements // (n * h * w * w))
    for r0 in range(0, h, rows_per_chunk):
        rows = slice(r0 * w, min(r0 + rows_per_chunk, h) * w)
        cand = torch.matmul(tgt[:, rows].T, sources)  # [n, m, hw]
        yield rows, cand, band_labels


def _window_bands(
    target: torch.Tensor, ctx_feats: torch.Tensor, ctx_labels: torch.Tensor, radius: int, band_rows: int = _BAND_ROWS
):
    """Targets ``band_rows`` grid rows at a time against the band of ``band_rows + 2r`` source rows (full
    width) that their windows fall in.

    The band is a strided view of the row-padded context features, so one matmul per band computes all
    cosines without copying features; sources outside a target's (2r+1)^2 window (or outside the image)
    are set to -inf, which no (hw)^2 mask is needed for: the mask is a function of the offset inside the
    band, built once per call as [band_rows*w, (band_rows+2r)*w].
    """
    n, C, h, w = ctx_feats.shape
    K = ctx_labels.shape[1]
    dev, b, r = target.device, band_rows, radius
    span = b + 2 * r
    Hp = math.ceil(h / b) * b
    tgt = F.pad(target, (0, 0, 0, Hp - h))
    src = F.pad(ctx_feats, (0, 0, r, r + Hp - h))  # zero rows above and below (masked out below)
    lab = F.pad(ctx_labels, (0, 0, r, r + Hp - h))
    # target (a, x) in the band, source (q, c) in the band rows: inside the window if |q - a - r| <= r, |c - x| <= r
    a = torch.arange(b, device=dev)[:, None, None, None]
    x = torch.arange(w, device=dev)[None, :, None, None]
    q = torch.arange(span, device=dev)[None, None, :, None]
    c = torch.arange(w, device=dev)[None, None, None, :]
    window = ((q - a - r).abs() <= r) & ((c - x).abs() <= r)  # [b, w, span, w]
    q_img = q.reshape(span) - r  # band row -> grid row offset (plus r0)
    for r0 in range(0, h, b):
        m = min(b, h - r0) * w
        t = tgt[:, r0 : r0 + b].reshape(C, b * w).T  # [b*w, C]
        band = src[:, :, r0 : r0 + span].reshape(n, C, span * w)  # view: the rows are contiguous
        cand = torch.matmul(t[:m], band)  # [n, m, span*w]
        row_inside = ((r0 + q_img) >= 0) & ((r0 + q_img) < h)  # [span]
        ok = (window & row_inside[None, None, :, None]).reshape(b * w, span * w)[:m]
        cand.masked_fill_(~ok, float("-inf"))
        band_labels = lab[:, :, r0 : r0 + span].reshape(n, K, span * w).transpose(1, 2)  # [n, span*w, K]
        yield slice(r0 * w, r0 * w + m), cand, band_labels


# ----------------------------------------------------------------------------------------------------------
# Protocol helpers: frame size, reading, first-frame labels, output maps, palette PNGs
# ----------------------------------------------------------------------------------------------------------
def dino_frame_size(width: int, height: int, short_side: int = 480, long_side_multiple: int = 64) -> tuple[int, int]:
    """(width, height) of DINO's resize: short side -> ``short_side``, long side floored to a multiple.

    Square frames count as landscape (DINO's ``read_frame`` branch when h <= w)."""
    if height > width:
        return short_side, int(short_side * height / width // long_side_multiple * long_side_multiple)
    return int(short_side * width / height // long_side_multiple * long_side_multiple), short_side


def frame_size(
    width: int, height: int, patch: int, short_side: int = 480, long_side_multiple: int = 64
) -> tuple[int, int]:
    """(width, height) frames are resized to: DINO's rule when it gives multiples of the patch size (p = 8, 16:
    854x480 -> 832x480), otherwise DINO's rule applied with p for both roundings: the short side floored to a
    multiple of p, the long side scaled with the aspect ratio and floored to a multiple of p (p = 14:
    854x480 -> 840x476). The official code only ran p = 8 and 16 on DAVIS; this is what DINOv2 backbones get."""
    w, h = dino_frame_size(width, height, short_side, long_side_multiple)
    if w % patch == 0 and h % patch == 0:
        return w, h
    short = short_side // patch * patch
    if short < patch:
        raise UserError(f"task.short_side={short_side} is smaller than the patch size {patch}")
    return dino_frame_size(width, height, short, patch)


def read_frame(
    path: Path, size: tuple[int, int], mean: Sequence[float], std: Sequence[float]
) -> tuple[torch.Tensor, tuple[int, int]]:
    """A frame as DINO reads it: decoded to RGB, bilinear cv2 resize to ``size`` (w, h) in uint8, /255, normalised.

    Decoded by the project's one reader (:func:`srt.io.read_image`: any 8-bit or 16-bit greyscale mode, errors
    name the file); DINO decodes with ``cv2.imread``, which gives the same pixels (every JPEG and PNG of the
    DAVIS, saliency, VOC and ROxford fixtures compared: identical), and cv2's resize acts per channel.
    Returns the ``[3,h,w]`` tensor and the original (height, width)."""
    try:
        img = np.asarray(read_image(path, "RGB", "image"))
    except MissingFileError:
        raise
    except UserError as e:
        raise UserError(f"cannot read image {path}: {e.__cause__ or e}") from e
    orig = img.shape[:2]
    img = cv2.resize(img, size).astype(np.float32) / 255.0
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
    x = (x - torch.tensor(mean, dtype=torch.float32)[:, None, None]) / torch.tensor(std, dtype=torch.float32)[
        :, None, None
    ]
    return x, orig


def first_frame_labels(annotation: np.ndarray, grid: tuple[int, int], n_labels: int) -> torch.Tensor:
    """One-hot ``[n_labels, gh, gw]`` of an annotation resized with PIL NEAREST to the (gh, gw) token grid.

    DINO counts channels from the resized mask (max + 1); we count them from the full-size first annotation,
    so channel i is object i even when a small object vanishes at token resolution (an all-zero channel never
    wins the final argmax, so the written labels are the same). Void (255) is background, as in the scoring.
    """
    gh, gw = grid
    small = np.array(Image.fromarray(annotation).resize((gw, gh), Image.NEAREST))
    small = np.where(small == davis_eval.VOID_LABEL, 0, small)
    return F.one_hot(torch.from_numpy(small.astype(np.int64)), n_labels).permute(2, 0, 1).float()


def soft_to_labels(soft: torch.Tensor, stride: int, out_size: tuple[int, int]) -> np.ndarray:
    """DINO's output path: bilinear x``stride``, per-channel min-max (channels with max > 0), argmax, PIL NEAREST
    resize to ``out_size`` (height, width). Returns uint8 ``[H, W]``."""
    up = F.interpolate(
        soft[None].float(), scale_factor=stride, mode="bilinear", align_corners=False, recompute_scale_factor=False
    )[0]
    lo = up.amin(dim=(1, 2), keepdim=True)
    hi = up.amax(dim=(1, 2), keepdim=True)
    span = hi - lo
    scaled = (up - lo) / torch.where(span > 0, span, torch.ones_like(span))
    # DINO divides by zero for a constant positive channel; its NaNs then win torch.max: +inf keeps that outcome.
    scaled = torch.where(span > 0, scaled, torch.full_like(up, float("inf")))
    up = torch.where(hi > 0, scaled, up)
    labels = torch.max(up, dim=0).indices.to(torch.uint8).cpu().numpy()  # ties: the lowest id, as DINO
    H, W = out_size
    return np.array(Image.fromarray(labels).resize((W, H), Image.NEAREST))


def davis_palette() -> np.ndarray:
    """The DAVIS / PASCAL VOC colour map, 256 x 3 uint8 (index i: bits of i spread over R, G, B)."""
    idx = np.arange(256)
    pal = np.zeros((256, 3), dtype=np.int64)
    for bit in range(8):
        for ch in range(3):
            pal[:, ch] |= ((idx >> (3 * bit + ch)) & 1) << (7 - bit)
    return pal.astype(np.uint8)


DAVIS_PALETTE = davis_palette()


def write_label_png(path: Path, labels: np.ndarray) -> None:
    """Write object ids ``[H, W]`` as an indexed PNG with the DAVIS palette, atomically."""
    atomic_save_png(path, np.asarray(labels, dtype=np.uint8), palette=DAVIS_PALETTE)


# ----------------------------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------------------------
@dataclass
class DavisConfig:
    """Schema of ``conf/task/davis.yaml``. Defaults are the DINO protocol."""

    root: str = "???"  # DAVIS root: JPEGImages/, Annotations/, ImageSets/
    split: str = "val"  # ImageSets/2017/<split>.txt
    sequences: Optional[list[str]] = None  # subset of the split (default: all of it)
    resolution: str = "480p"
    short_side: int = 480
    long_side_multiple: int = 64
    mean: Optional[list[float]] = field(default_factory=lambda: list(DINO_MEAN))  # null: the backbone's
    std: Optional[list[float]] = field(default_factory=lambda: list(DINO_STD))  # null: the backbone's
    n_last_frames: int = 7
    size_mask_neighborhood: int = 12  # window radius in cells of the feature grid; 0: none
    topk: int = 5
    temperature: float = 0.1
    max_frames: Optional[int] = None  # TEST/DEBUG ONLY: propagate and score the first N frames
    predictions_dir: str = "davis_predictions"  # under the run directory: <this>/<seq>/<frame>.png

    def validate(self) -> DavisConfig:
        _check_propagation_settings(
            self.n_last_frames, self.size_mask_neighborhood, self.topk, self.temperature, prefix="task."
        )
        if self.root in ("", "???"):
            raise UserError("task.root is not set; expected the DAVIS folder holding JPEGImages/ and Annotations/")
        if self.short_side < 1 or self.long_side_multiple < 1:
            raise UserError(
                f"task.short_side={self.short_side} / task.long_side_multiple={self.long_side_multiple} "
                f"are not valid; expected positive integers"
            )
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and (len(value) != 3 or (name == "std" and min(value) <= 0)):
                raise UserError(
                    f"task.{name}={value} is not valid; expected null or 3 numbers" + (" > 0" if name == "std" else "")
                )
        if self.max_frames is not None and self.max_frames < 2:
            raise UserError(f"task.max_frames={self.max_frames} is not valid; expected null (all frames) or >= 2")
        return self


class DavisTask(Task):
    """DAVIS-2017 semi-supervised VOS: DINO label propagation, scored with J&F (see the module docstring)."""

    name = "davis"
    Config = DavisConfig
    outputs = ("tokens",)

    def cache_key_config(self) -> Mapping[str, Any]:
        # Cached items are per sequence: choosing which sequences, or where the PNGs go, does not change them.
        cfg = asdict(self.cfg)
        for key in ("split", "sequences", "predictions_dir"):
            cfg.pop(key)
        return cfg

    def _first_annotation(self, root: Path, seq: str, frames: Sequence[Path]) -> Path:
        path = root / "Annotations" / self.cfg.resolution / seq / f"{frames[0].stem}.png"
        if not path.is_file():
            raise MissingFileError(f"missing first-frame annotation {path} for frame {frames[0]}")
        return path

    def check_settings(self, model: ModelInfo, srt: SRTConfig) -> None:
        if self.cfg.short_side < model.patch_size:
            raise UserError(
                f"task.short_side={self.cfg.short_side} is smaller than the patch size {model.patch_size} of "
                f"{model.name}; expected at least {model.patch_size}"
            )

    def largest_input(self, model: ModelInfo) -> tuple[int, int, None]:
        """DAVIS frames are 854 x 480 at 480p: the size they are resized to (memory estimate)."""
        w, h = frame_size(854, 480, model.patch_size, self.cfg.short_side, self.cfg.long_side_multiple)
        return h, w, None

    def check_data(self) -> None:
        """Every selected sequence through :func:`eval.davis.check_sequence`: every annotation decoded (object
        ids 1..N in the first, one size, ids the first frame lacks named in a warning), every frame checked
        (whole, not truncated, the annotations' size), frames and annotations paired by name. DAVIS-2017 val: ~2000 annotations, a few seconds."""
        cfg = self.cfg
        root = Path(cfg.root)
        sequences = davis_eval.select_sequences(root, cfg.split, cfg.sequences)

        check_each(
            sequences,
            lambda seq: davis_eval.check_sequence(root, seq, cfg.resolution, cfg.max_frames),
            "DAVIS sequences",
        )

    def data_files(self) -> DataFiles:
        cfg = self.cfg
        files = davis_eval.files_read(cfg.root, cfg.split, cfg.sequences, cfg.resolution, cfg.max_frames)
        return DataFiles.under("DAVIS-2017", cfg.root, files)

    def run(self, extractor: FeatureExtractor, ctx: RunContext) -> dict[str, float]:
        from tqdm import tqdm

        cfg: DavisConfig = self.cfg
        root = Path(cfg.root)
        sequences = davis_eval.select_sequences(root, cfg.split, cfg.sequences)
        pred_dir = Path(ctx.out_dir) / cfg.predictions_dir
        feature_s = propagation_s = 0.0
        n_frames = 0
        for seq in tqdm(sequences, desc="DAVIS sequences", disable=not ctx.progress):
            if ctx.cache.skips(seq):  # another shard's sequence (shard=i/n)
                continue
            frames = davis_eval.image_paths(root, seq, cfg.resolution)
            if cfg.max_frames is not None:
                frames = frames[: cfg.max_frames]
            first_path = self._first_annotation(root, seq, frames)
            annotation = davis_eval.read_label_png(first_path)
            item = ctx.cache.get_or_compute(
                seq, lambda: self._propagate_sequence(extractor, ctx, seq, frames, annotation, first_path)
            )
            soft = torch.as_tensor(np.asarray(item["soft"]))
            feature_s += float(item["feature_seconds"])
            propagation_s += float(item["propagation_seconds"])
            n_frames += len(frames)
            write_label_png(pred_dir / seq / f"{frames[0].stem}.png", annotation)  # frame 0: the GT, as DINO
            for path, frame_soft in zip(frames[1:], soft):
                write_label_png(
                    pred_dir / seq / f"{path.stem}.png", soft_to_labels(frame_soft, extractor.stride, annotation.shape)
                )
        ctx.cache.items_done()  # a shard run stops here

        scores, metrics = davis_eval.evaluate_and_write(
            root, pred_dir, sequences, cfg.split, cfg.max_frames, ctx.progress, cfg.resolution, allow_empty=True
        )
        for seq, reason in scores.skipped.items():
            log.warning("davis: %s not scored: %s", seq, reason)
        if not metrics:
            log.warning("davis: no sequence could be scored; the predictions are in %s", pred_dir)
        metrics = dict(metrics)
        metrics.update(
            {
                "n_objects": float(scores.n_objects),
                "n_sequences": float(len(sequences)),
                "n_sequences_scored": float(len(sequences) - len(scores.skipped)),
                "features_s_per_frame": feature_s / max(n_frames, 1),
                "propagation_s_per_frame": propagation_s / max(n_frames - len(sequences), 1),
            }
        )
        return metrics

    def _frame_grid(self, extractor: FeatureExtractor, W: int, H: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """The (w, h) frames of a W x H sequence are resized to and the (h, w) feature grid at the extractor's stride."""
        cfg: DavisConfig = self.cfg
        p, s = extractor.patch_size, extractor.stride
        size = frame_size(W, H, p, cfg.short_side, cfg.long_side_multiple)
        if size[0] % p or size[1] % p or size[0] % s or size[1] % s:
            raise UserError(
                f"resized frames {size[0]}x{size[1]} are not multiples of the patch size {p} and "
                f"feature stride {s}; change task.short_side / task.long_side_multiple"
            )
        return size, (size[1] // s, size[0] // s)

    def _propagate_sequence(
        self,
        extractor: FeatureExtractor,
        ctx: RunContext,
        seq: str,
        frames: list[Path],
        annotation: np.ndarray,
        annotation_path: Path,
    ) -> dict[str, np.ndarray]:
        from tqdm import tqdm

        cfg: DavisConfig = self.cfg
        mean = cfg.mean if cfg.mean is not None else extractor.mean
        std = cfg.std if cfg.std is not None else extractor.std
        H, W = annotation.shape
        s = extractor.stride
        size, grid = self._frame_grid(extractor, W, H)
        n_labels = davis_eval.object_count(annotation, f"first-frame annotation {annotation_path}") + 1
        feature_s = propagation_s = 0.0

        def features(path: Path) -> torch.Tensor:
            nonlocal feature_s
            x, orig = read_frame(path, size, mean, std)
            if orig != (H, W):
                raise UserError(
                    f"frame {path} is {orig[1]}x{orig[0]} but the first annotation {annotation_path} "
                    f"is {W}x{H}; expected equal sizes"
                )
            t0 = time.perf_counter()
            with torch.no_grad():
                tokens = extractor(x[None].to(ctx.device))["tokens"][0]
            if tokens.is_cuda:
                torch.cuda.synchronize(tokens.device)  # time the work, not the launch
            feature_s += time.perf_counter() - t0
            if tuple(tokens.shape[1:]) != grid:  # the extractor broke its contract: a bug, not bad input
                raise ValueError(
                    f"extractor returned a {tuple(tokens.shape[1:])} token grid for {path}; expected "
                    f"{grid} (frame {size[0]}x{size[1]} at stride {s})"
                )
            return tokens

        first = first_frame_labels(annotation, grid, n_labels).to(ctx.device)
        prop = LabelPropagator(
            features(frames[0]), first, cfg.n_last_frames, cfg.size_mask_neighborhood, cfg.topk, cfg.temperature
        )
        soft = []
        for path in tqdm(frames[1:], desc=seq, leave=False, disable=not ctx.progress):
            feat = features(path)
            t0 = time.perf_counter()
            soft.append(prop.step(feat).cpu())
            propagation_s += time.perf_counter() - t0
        soft_all = torch.stack(soft) if soft else torch.zeros((0, n_labels, *grid))
        return {
            "soft": soft_all.numpy().astype(np.float32),
            "feature_seconds": np.float64(feature_s),
            "propagation_seconds": np.float64(propagation_s),
        }
