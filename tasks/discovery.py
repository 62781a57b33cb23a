"""Unsupervised single-object discovery on PASCAL VOC2007 trainval with TokenCut (paper Table 4; PROTOCOLS.md 2.5).

For each image of ``ImageSets/Main/<image_set>.txt`` (TokenCut: ``--dataset VOC07 --set trainval``, 5011
images): RGB at native resolution, normalised, zero-padded bottom/right (in normalised space) to multiples
of the patch size; the last attention's keys (SRT-ensembled when the extractor is an SRT wrapper);
TokenCut (:mod:`tasks.tokencut`); the box is the seed component's cell extent clipped to the unpadded image
(:func:`tasks.tokencut.component_box`). Scored with CorLoc (:mod:`eval.discovery`): all GT boxes count,
difficult ones included, xmin/ymin made 0-based.

Outputs under the run directory: ``boxes.csv`` (``image_id,x1,y1,x2,y2,best_iou,hit,n_gt``; re-score with
``python -m eval.discovery --pred <run>/boxes.csv --voc <root>``). An image whose annotation has no object
cannot be a hit but counts, as in TokenCut: it is named in a warning, has ``n_gt`` 0 in ``boxes.csv``, and the
metric ``n_images_without_objects`` counts them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch.nn.functional as F
from tqdm import tqdm

from eval.discovery import (
    box_iou,
    corloc,
    is_hit,
    no_object_warning,
    read_image_set,
    read_voc_annotation,
    voc_dir,
    without_objects,
)
from srt.errors import UserError
from srt.io import atomic_write_text, check_image, read_image

from .base import DataFiles, FeatureExtractor, RunContext, Task, check_each
from .images import check_run_size
from .tokencut import (
    ITEM_FORMAT,
    TokenCutConfig,
    component_box,
    degeneration,
    normalised_tensor,
    tokencut_image,
    warn_if_degenerate,
)

log = logging.getLogger(__name__)


@dataclass
class DiscoveryConfig(TokenCutConfig):
    """Schema of ``conf/task/discovery.yaml`` (TokenCut settings: :class:`tasks.tokencut.TokenCutConfig`)."""

    root: str = "???"  # the folder holding VOCdevkit/VOC<year>
    year: str = "2007"  # VOC2007 (paper Table 4)
    image_set: str = "trainval"  # ImageSets/Main/<image_set>.txt
    boxes_file: str = "boxes.csv"  # under the run directory

    def validate(self) -> DiscoveryConfig:
        super().validate()
        if self.root in ("", "???"):
            raise UserError(f"task.root is not set; expected the folder holding VOCdevkit/VOC{self.year}")
        return self


class DiscoveryTask(Task):
    """TokenCut single-object discovery, scored with CorLoc (see the module docstring)."""

    name: ClassVar[str] = "discovery"
    Config: ClassVar[type] = DiscoveryConfig
    outputs: ClassVar[tuple[str, ...]] = ("keys",)

    def check_settings(self, model, srt) -> None:
        self.cfg.check_settings(model, srt)
        self._patch_size = model.patch_size

    def _ids(self) -> tuple[Path, list[str]]:
        voc = voc_dir(self.cfg.root, self.cfg.year)
        return voc, read_image_set(voc, self.cfg.image_set)[: self.cfg.max_images]

    def ground_truth(self) -> dict[str, np.ndarray]:
        """image id -> GT boxes, every annotation read and its image checked (see :meth:`check_data`); once."""
        if getattr(self, "_ground_truth", None) is None:
            voc, ids = self._ids()
            patch = getattr(self, "_patch_size", None)

            def check(image_id: str) -> np.ndarray:
                xml = voc / "Annotations" / f"{image_id}.xml"
                boxes, size = read_voc_annotation(xml)
                image = voc / "JPEGImages" / f"{image_id}.jpg"
                actual = check_image(image, "VOC image")
                if size is not None and tuple(size) != tuple(actual):
                    raise UserError(
                        f"VOC image {image} is {actual[0]}x{actual[1]} but its annotation {xml} says "
                        f"{size[0]}x{size[1]}; expected the image the annotation describes"
                    )
                if patch is not None:  # padded to patch multiples: below one patch it would be mostly padding
                    check_run_size(image, actual, actual, patch, "VOC images run at their own size")
                return boxes

            self._ground_truth = dict(zip(ids, check_each(ids, check, f"VOC{self.cfg.year} images")))
        return self._ground_truth

    def check_data(self) -> None:
        """Every annotation parsed (boxes, size), every image checked whole and at its annotation's size.
        VOC07 trainval's 5011 images: a few seconds. (Images without objects are named when the run scores.)"""
        self.ground_truth()

    def data_files(self) -> DataFiles:
        cfg = self.cfg
        voc = voc_dir(cfg.root, cfg.year)
        ids = read_image_set(voc, cfg.image_set)[: cfg.max_images]
        files = [voc / "ImageSets" / "Main" / f"{cfg.image_set}.txt"]
        files += [
            voc / folder / f"{i}{ext}" for i in ids for folder, ext in (("Annotations", ".xml"), ("JPEGImages", ".jpg"))
        ]
        return DataFiles.under(f"VOC{cfg.year}", cfg.root, files)

    def cache_key_config(self) -> dict:
        return {**super().cache_key_config(), "item_format": ITEM_FORMAT}

    def run(self, extractor: FeatureExtractor, ctx: RunContext) -> dict[str, float]:
        cfg: DiscoveryConfig = self.cfg
        voc, ids = self._ids()
        # every annotation read first (and kept: boxes are small): a broken file fails before any feature
        gt_boxes = self.ground_truth()
        empty = without_objects(ids, [gt_boxes[i] for i in ids])
        if empty:
            log.warning("discovery: %s", no_object_warning(empty, len(ids), f"VOC{cfg.year} {cfg.image_set}"))
        p = extractor.patch_size
        rows = ["image_id,x1,y1,x2,y2,best_iou,hit,n_gt"]
        boxes = []
        feature_s = ncut_s = 0.0
        items = []
        for image_id in tqdm(ids, desc=f"discovery VOC{cfg.year} {cfg.image_set}", disable=not ctx.progress):
            if ctx.cache.skips(f"VOC{cfg.year}/{image_id}"):  # another shard's image (shard=i/n)
                continue
            image_path = voc / "JPEGImages" / f"{image_id}.jpg"

            def compute() -> dict[str, np.ndarray]:
                x = normalised_tensor(read_image(image_path, "RGB", "VOC image"), extractor)
                height, width = x.shape[1:]
                # zero padding bottom/right in normalised space, as tc:main_tokencut.py
                padded = F.pad(x, (0, -width % p, 0, -height % p))
                out = tokencut_image(extractor, padded, cfg, ctx.device)
                return {
                    "box": np.array(component_box(out.cut.component, out.stride, (height, width))),
                    "component": out.cut.component,
                    "edge_fraction": out.cut.edge_fraction,
                    "seed_norm_ratio": out.seed_norm_ratio,
                    "feature_seconds": out.feature_seconds,
                    "ncut_seconds": out.ncut_seconds,
                }

            item = ctx.cache.get_or_compute(f"VOC{cfg.year}/{image_id}", compute)
            items.append(item)
            feature_s += float(item["feature_seconds"])
            ncut_s += float(item["ncut_seconds"])
            box = [int(v) for v in item["box"]]
            boxes.append(box)
            best = float(box_iou(box, gt_boxes[image_id]).max(initial=0.0))
            hit = int(is_hit(box, gt_boxes[image_id]))
            rows.append(f"{image_id},{','.join(map(str, box))},{best:.6f},{hit},{len(gt_boxes[image_id])}")
        ctx.cache.items_done()  # a shard run stops here
        atomic_write_text(Path(ctx.out_dir) / cfg.boxes_file, "\n".join(rows) + "\n")
        metrics = {
            "CorLoc": corloc(boxes, [gt_boxes[i] for i in ids]),
            "n_images": float(len(ids)),
            "n_images_without_objects": float(len(empty)),
            "features_s_per_image": feature_s / len(ids),
            "ncut_s_per_image": ncut_s / len(ids),
            **degeneration(
                [float(i["edge_fraction"]) for i in items],
                [float(i["seed_norm_ratio"]) for i in items],
                [i["component"] for i in items],
            ),
        }
        warn_if_degenerate(metrics, extractor.name, cfg.tau)
        return metrics
