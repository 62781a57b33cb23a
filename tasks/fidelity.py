"""Task-free fidelity of fine feature fields: how close a method's field at stride s is to features computed at a
truly finer resolution (issue 14, item 4; the measures are :mod:`eval.fidelity`).

For each image (every ``*.jpg`` / ``*.png`` under ``task.root``, sorted; ``max_images`` of them spread evenly
over the list): resized so the short side is ``short_side`` (LANCZOS, both sides floored to multiples of p),
normalised with the extractor's mean and std. The method's field is ``extractor.dense(x, s)["tokens"]``; the
reference is the plain backbone's ``tokens`` on the same image upsampled by P = p/s (bicubic), whose token grid
is exactly the H/s x W/s grid of the field. Scores per image: ``cosine``, ``edge_corr``, ``edge_ratio``
(see :mod:`eval.fidelity`), averaged over images; ``per_image.csv`` in the run directory.

The reference pass costs what stride reduction at s costs (P^2 tokens, P^4 attention), so keep images small
(``short_side: 224`` by default). Works with every fine-feature method (``upsampler=...``) and with SRT itself
(``srt.level>=1``; its dense field); a bare backbone or the jitter ensemble has no dense field (error).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from eval.fidelity import fidelity_scores
from srt.errors import MissingFileError, UserError
from srt.io import atomic_write_text, check_image, read_image

from .base import DataFiles, FeatureExtractor, RunContext, Task, check_each

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class FidelityConfig:
    root: str = "???"  # a folder searched recursively for *.jpg / *.jpeg / *.png images
    max_images: Optional[int] = 8  # images used, spread evenly over the sorted list; null = all
    short_side: int = 224  # images resized so the short side is this (both sides floored to multiples of p)
    stride: Optional[int] = None  # stride of the compared fields; null = the extractor's stride

    def validate(self) -> FidelityConfig:
        if self.root in ("", "???"):
            raise UserError("task.root is not set; expected a folder holding *.jpg or *.png images")
        if self.max_images is not None and self.max_images < 1:
            raise UserError(f"task.max_images={self.max_images} is not valid; expected null or an integer >= 1")
        if self.short_side < 1:
            raise UserError(f"task.short_side={self.short_side} is not valid; expected a positive integer")
        if self.stride is not None and self.stride < 1:
            raise UserError(f"task.stride={self.stride} is not valid; expected null or a positive integer")
        return self


def list_images(root: str | Path, max_images: Optional[int]) -> list[Path]:
    """Images under ``root`` (sorted), ``max_images`` of them spread evenly; MissingFileError naming the folder."""
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"task.root={root} is not a folder; expected a folder holding images")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise MissingFileError(f"no *.jpg / *.jpeg / *.png images under {root}")
    if max_images is not None and max_images < len(paths):
        picks = np.linspace(0, len(paths) - 1, max_images).round().astype(int)
        paths = [paths[i] for i in picks]
    return paths


def load_image(path: Path, short_side: int, patch: int, mean, std) -> torch.Tensor:
    """[3, H, W] normalised, short side ``short_side``, H and W floored to multiples of ``patch``."""
    rgb = read_image(path, "RGB")
    w, h = rgb.size
    scale = short_side / min(w, h)
    size = (max(int(w * scale) // patch, 1) * patch, max(int(h * scale) // patch, 1) * patch)
    x = np.asarray(rgb.resize(size, resample=Image.LANCZOS), dtype=np.float32) / 255.0
    x = torch.from_numpy(x).permute(2, 0, 1)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def reference_field(backbone, image: torch.Tensor, stride: int) -> torch.Tensor:
    """The backbone's ``tokens`` on ``image`` [1,3,H,W] upsampled by p/stride: a [1, C, H/stride, W/stride] grid."""
    factor = backbone.patch_size // stride
    big = image if factor == 1 else F.interpolate(image, scale_factor=factor, mode="bicubic", align_corners=False)
    return backbone(big)["tokens"]


class FidelityTask(Task):
    """Cosine and boundary agreement of a method's fine field with finer-resolution features (module docstring)."""

    name: ClassVar[str] = "fidelity"
    Config: ClassVar[type] = FidelityConfig
    outputs: ClassVar[tuple[str, ...]] = ("tokens",)

    def check_settings(self, model, srt) -> None:
        """Before any model is built: the compared stride divides the patch size, and the extractor srt.*
        describes has a dense field (a fine-feature method of ``upsampler=`` always has one)."""
        if self.cfg.stride is not None and model.patch_size % self.cfg.stride:
            raise UserError(
                f"task.stride={self.cfg.stride} is not valid for patch size {model.patch_size}; expected a divisor: "
                f"{[d for d in range(1, model.patch_size + 1) if model.patch_size % d == 0]}"
            )
        if srt.method == "jitter" or srt.at_block is not None:
            what = "srt.method=jitter" if srt.method == "jitter" else f"srt.at_block={srt.at_block}"
            raise UserError(
                f"task=fidelity compares a dense field, which {what} does not have; use a fine-feature method "
                "(upsampler=jitter for the jitter ensemble, upsampler=srt_dense, ...) or plain SRT"
            )

    def check_data(self) -> None:
        """Every image checked whole (:func:`srt.io.check_image`: header and end marker)."""
        check_each(list_images(self.cfg.root, self.cfg.max_images), check_image, "fidelity images")

    def data_files(self) -> DataFiles:
        return DataFiles.under("images", self.cfg.root, list_images(self.cfg.root, self.cfg.max_images))

    def run(self, extractor: FeatureExtractor, ctx: RunContext) -> dict[str, float]:
        cfg: FidelityConfig = self.cfg
        dense = getattr(extractor, "dense", None)
        backbone = getattr(extractor, "backbone", None) or getattr(extractor, "wrapped", None)
        if not callable(dense) or backbone is None:
            raise UserError(
                f"task=fidelity needs an extractor with a dense field and its plain backbone (an upsampler=... method, "
                f"or SRT with srt.level>=1); got {type(extractor).__name__}"
            )
        p = extractor.patch_size
        stride = int(cfg.stride or extractor.stride)
        if p % stride:
            raise UserError(f"task.stride={stride} is not valid; expected a divisor of the patch size {p}")
        paths = list_images(cfg.root, cfg.max_images)
        root = Path(cfg.root)

        def compute(path: Path) -> dict[str, np.ndarray]:
            x = load_image(path, cfg.short_side, p, extractor.mean, extractor.std)[None].to(ctx.device)
            t0 = time.perf_counter()
            with torch.no_grad():
                fine = dense(x, stride)["tokens"][0].float().cpu()
                t1 = time.perf_counter()
                ref = reference_field(backbone, x, stride)[0].float().cpu()
            scores = fidelity_scores(fine, ref)
            return {**{k: np.float64(v) for k, v in scores.items()}, "feature_seconds": np.float64(t1 - t0)}

        rows, per_image = ["image,cosine,edge_corr,edge_ratio"], []
        for path in tqdm(paths, desc="fidelity", disable=not ctx.progress):
            item_id = "/".join(
                re.sub(r"[^A-Za-z0-9._+=-]+", "_", part) for part in path.relative_to(root).with_suffix("").parts
            )
            if ctx.cache.skips(item_id):  # another shard's image (shard=i/n)
                continue
            item = ctx.cache.get_or_compute(item_id, lambda path=path: compute(path))
            per_image.append(item)
            rows.append(
                f"{item_id},{float(item['cosine']):.6f},{float(item['edge_corr']):.6f},{float(item['edge_ratio']):.6f}"
            )
        ctx.cache.items_done()  # a shard run stops here
        atomic_write_text(Path(ctx.out_dir) / "per_image.csv", "\n".join(rows) + "\n")
        metrics = {
            k: float(np.nanmean([float(i[k]) for i in per_image])) for k in ("cosine", "edge_corr", "edge_ratio")
        }
        metrics["n_images"] = float(len(per_image))
        metrics["features_s_per_image"] = float(np.mean([float(i["feature_seconds"]) for i in per_image]))
        return metrics
