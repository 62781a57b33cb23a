"""Unsupervised salient object segmentation with TokenCut (paper Table 3; PROTOCOLS.md 2.3).

For each image of ECSSD, DUTS-TE or DUT-OMRON (official layouts, images in sorted order): RGB, resized with
LANCZOS to ``(round(W/p) p, round(H/p) p)`` (Python rounding, as tc:unsupervised_saliency_detection/utils.py),
normalised, the last attention's keys (SRT-ensembled when the extractor is an SRT wrapper), TokenCut
(:mod:`tasks.tokencut`), the seed component nearest-upsampled to the original H x W. No post-processing
(the paper reports TokenCut without the bilateral solver). Scored with :mod:`eval.saliency` (maxF, IoU, Acc,
x100, as TokenCut computes them).

Outputs under the run directory: ``masks/<stem>.png`` (0/255; re-score with
``python -m eval.saliency --pred <run>/masks --gt <root>/<GT folder>``) and ``per_image.csv``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from eval.pairing import pair_by_name
from eval.saliency import ImageScores, aggregate, image_scores, read_mask
from srt.errors import MissingFileError, UserError
from srt.io import atomic_save_png, atomic_write_text, check_image, read_image

from .base import DataFiles, FeatureExtractor, RunContext, Task, check_each
from .images import check_run_size
from .tokencut import ITEM_FORMAT, TokenCutConfig, degeneration, normalised_tensor, tokencut_image, warn_if_degenerate

#: dataset -> (image folder, ground-truth folder) inside the dataset root, as the datasets are distributed
LAYOUTS: dict[str, tuple[str, str]] = {
    "ECSSD": ("images", "ground_truth_mask"),
    "DUTS-TE": ("DUTS-TE-Image", "DUTS-TE-Mask"),
    "DUT-OMRON": ("DUT-OMRON-image", "pixelwiseGT-new-PNG"),
}


@dataclass
class SaliencyConfig(TokenCutConfig):
    """Schema of ``conf/task/saliency.yaml`` (TokenCut settings: :class:`tasks.tokencut.TokenCutConfig`)."""

    dataset: str = "ECSSD"  # ECSSD | DUTS-TE | DUT-OMRON
    root: str = "???"  # the dataset folder holding the image and GT folders of LAYOUTS
    predictions_dir: str = "masks"  # under the run directory

    def validate(self) -> SaliencyConfig:
        super().validate()
        if self.dataset not in LAYOUTS:
            raise UserError(f"task.dataset={self.dataset!r} is not valid; expected one of {', '.join(LAYOUTS)}")
        if self.root in ("", "???"):
            raise UserError(
                f"task.root is not set; expected the {self.dataset} folder holding "
                f"{'/ and '.join(LAYOUTS[self.dataset])}/"
            )
        return self


def list_pairs(root: str | Path, dataset: str) -> list[tuple[Path, Path]]:
    """(image, GT mask) paths in sorted image order, paired by name (GT = image stem + .png; a mask without an
    image of its name is an error too: :func:`eval.pairing.pair_by_name`). Errors name what is missing."""
    image_sub, gt_sub = LAYOUTS[dataset]
    image_dir, gt_dir = Path(root) / image_sub, Path(root) / gt_sub
    for folder in (image_dir, gt_dir):
        if not folder.is_dir():
            raise MissingFileError(
                f"{dataset} folder {folder} does not exist; expected {root}/{{{image_sub},{gt_sub}}}"
            )
    images = sorted(image_dir.glob("*.jpg"))
    if not images:
        raise MissingFileError(f"no *.jpg images in {image_dir}")
    return pair_by_name(images, sorted(gt_dir.glob("*.png")), "image", "ground-truth mask", gt_dir, ".png")


def _check_sizes(gt_path: Path, gt_shape: tuple[int, int], image_path: Path, image_size: tuple[int, int]) -> None:
    width, height = image_size
    if tuple(gt_shape) != (height, width):
        raise UserError(
            f"ground-truth mask {gt_path} is {gt_shape[1]}x{gt_shape[0]} but image {image_path} "
            f"is {width}x{height}; expected equal sizes"
        )


def run_size(size: tuple[int, int], patch_size: int) -> tuple[int, int]:
    """(w, h) an image of ``size`` is resized to: the nearest multiples of the patch size (TokenCut's)."""
    return round(size[0] / patch_size) * patch_size, round(size[1] / patch_size) * patch_size


def check_pair(image_path: Path, gt_path: Path, patch_size: int | None = None) -> None:
    """The mask decoded in full and the image checked whole (header, end marker), at one size, and (with the
    model's patch size) at least one patch when resized; UserError naming the file otherwise."""
    gt = read_mask(gt_path, "ground-truth mask")
    size = check_image(image_path, "image")
    _check_sizes(gt_path, gt.shape, image_path, size)
    if patch_size is not None:
        how = "rounded to the nearest multiples of the patch size, as TokenCut resizes"
        check_run_size(image_path, size, run_size(size, patch_size), patch_size, how)


def resize_to_patches(image: Image.Image, patch_size: int, path: Path) -> Image.Image:
    """LANCZOS resize to the nearest multiples of the patch size (TokenCut's ``resize_pil``)."""
    width, height = image.size
    new_w, new_h = run_size(image.size, patch_size)
    if new_w == 0 or new_h == 0:
        raise UserError(f"image {path} ({width}x{height}) is smaller than half a patch ({patch_size} px)")
    return image.resize((new_w, new_h), resample=Image.LANCZOS)


def upsample_mask(cells: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of a cell mask to ``size_hw`` (torch ``F.interpolate`` 'nearest', as TokenCut)."""
    grid = torch.from_numpy(np.ascontiguousarray(cells, dtype=np.float32))[None, None]
    return F.interpolate(grid, size=tuple(size_hw), mode="nearest")[0, 0].numpy() > 0.5


class SaliencyTask(Task):
    """TokenCut saliency on ECSSD / DUTS-TE / DUT-OMRON, scored with maxF, IoU and Acc (see the module docstring)."""

    name: ClassVar[str] = "saliency"
    Config: ClassVar[type] = SaliencyConfig
    outputs: ClassVar[tuple[str, ...]] = ("keys",)

    def check_settings(self, model, srt) -> None:
        self.cfg.check_settings(model, srt)
        self._patch_size = model.patch_size

    def check_data(self) -> None:
        """Every ground-truth mask decoded and compared with its image's size (read from the image's header);
        every image checked whole (:func:`srt.io.check_image`). ECSSD's 1000 pairs: ~1-2 s."""
        pairs = list_pairs(self.cfg.root, self.cfg.dataset)[: self.cfg.max_images]
        patch = getattr(self, "_patch_size", None)
        check_each(pairs, lambda pair: check_pair(*pair, patch), f"{self.cfg.dataset} image / mask pairs")

    def data_files(self) -> DataFiles:
        pairs = list_pairs(self.cfg.root, self.cfg.dataset)[: self.cfg.max_images]
        return DataFiles.under(self.cfg.dataset, self.cfg.root, [path for pair in pairs for path in pair])

    def cache_key_config(self) -> dict:
        return {**super().cache_key_config(), "item_format": ITEM_FORMAT}

    def run(self, extractor: FeatureExtractor, ctx: RunContext) -> dict[str, float]:
        cfg: SaliencyConfig = self.cfg
        pairs = list_pairs(cfg.root, cfg.dataset)[: cfg.max_images]
        pred_dir = Path(ctx.out_dir) / cfg.predictions_dir
        scores: list[ImageScores] = []
        rows = ["image,F,IoU,Acc,tokens"]
        feature_s = ncut_s = 0.0
        items = []
        for image_path, gt_path in tqdm(pairs, desc=f"saliency {cfg.dataset}", disable=not ctx.progress):
            item_id = f"{cfg.dataset}/{image_path.stem}"
            if ctx.cache.skips(item_id):  # another shard's image (shard=i/n)
                continue
            rgb = read_image(image_path, "RGB", f"{cfg.dataset} image")
            gt = read_mask(gt_path, "ground-truth mask")
            _check_sizes(gt_path, gt.shape, image_path, rgb.size)

            def compute() -> dict[str, np.ndarray]:
                x = normalised_tensor(resize_to_patches(rgb, extractor.patch_size, image_path), extractor)
                out = tokencut_image(extractor, x, cfg, ctx.device)
                return {
                    "component": out.cut.component,
                    "edge_fraction": out.cut.edge_fraction,
                    "seed_norm_ratio": out.seed_norm_ratio,
                    "feature_seconds": out.feature_seconds,
                    "ncut_seconds": out.ncut_seconds,
                }

            item = ctx.cache.get_or_compute(item_id, compute)
            items.append(item)
            feature_s += float(item["feature_seconds"])
            ncut_s += float(item["ncut_seconds"])
            mask = upsample_mask(item["component"], gt.shape)
            atomic_save_png(pred_dir / f"{image_path.stem}.png", mask.astype(np.uint8) * 255)
            score = image_scores(mask, gt, name=str(image_path))
            scores.append(score)
            rows.append(
                f"{image_path.stem},{score.f_curve[0]:.6f},{score.iou:.6f},{score.acc:.6f},{item['component'].size}"
            )
        ctx.cache.items_done()  # a shard run stops here
        atomic_write_text(Path(ctx.out_dir) / "per_image.csv", "\n".join(rows) + "\n")
        metrics = aggregate(scores)
        metrics.update(
            {
                "n_images": float(len(scores)),
                "features_s_per_image": feature_s / len(scores),
                "ncut_s_per_image": ncut_s / len(scores),
            }
        )
        metrics.update(
            degeneration(
                [float(i["edge_fraction"]) for i in items],
                [float(i["seed_norm_ratio"]) for i in items],
                [i["component"] for i in items],
            )
        )
        warn_if_degenerate(metrics, extractor.name, cfg.tau)
        return metrics
