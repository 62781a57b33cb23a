"""Unsupervised single-object discovery on PASCAL VOC2007 trainval with TokenCut (paper Table 4; PROTOCOLS.md 2.5).

For each image of ``ImageSets/Main/<image_set>.txt`` (TokenCut: ``--dataset VOC07 --set trainval``, 5011
images): RGB at native resolution, normalised, zero-padded bottom/right (in normalised space) to multiples
of the patch size; the last attention's keys (SRT-ensembled when the extractor is an SRT wrapper);
TokenCut (:mod:`tasks.tokencut`); the box is the seed component's cell extent clipped to the unpadded image
(:func:`tasks.tokencut.component_box`). Scored with CorLoc (:mod:`eval.discovery`): all GT boxes count,
difficult ones included, xmin/ymin made 0-based.

Outputs under the run directory: ``boxes.csv`` (``image_id,x1,y1,x2,y2,best_iou,hit``; re-score with
``python -m eval.discovery --pred <run>/boxes.csv --voc <root>``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from eval.discovery import box_iou, corloc, is_hit, read_image_set, read_voc_boxes, voc_dir
from srt.io import atomic_write_text

from .base import DataFiles, FeatureExtractor, RunContext, Task
from .tokencut import TokenCutConfig, component_box, normalised_tensor, tokencut_image


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
            raise ValueError(f"task.root is not set; expected the folder holding VOCdevkit/VOC{self.year}")
        return self


class DiscoveryTask(Task):
    """TokenCut single-object discovery, scored with CorLoc (see the module docstring)."""

    name: ClassVar[str] = "discovery"
    Config: ClassVar[type] = DiscoveryConfig
    outputs: ClassVar[tuple[str, ...]] = ("keys",)

    def check_data(self) -> None:
        # the layout and the image list; run() reads every annotation before computing any feature
        read_image_set(voc_dir(self.cfg.root, self.cfg.year), self.cfg.image_set)

    def data_files(self) -> DataFiles:
        cfg = self.cfg
        voc = voc_dir(cfg.root, cfg.year)
        ids = read_image_set(voc, cfg.image_set)[: cfg.max_images]
        files = [voc / "ImageSets" / "Main" / f"{cfg.image_set}.txt"]
        files += [
            voc / folder / f"{i}{ext}" for i in ids for folder, ext in (("Annotations", ".xml"), ("JPEGImages", ".jpg"))
        ]
        return DataFiles.under(f"VOC{cfg.year}", cfg.root, files)

    def run(self, extractor: FeatureExtractor, ctx: RunContext) -> dict[str, float]:
        cfg: DiscoveryConfig = self.cfg
        voc = voc_dir(cfg.root, cfg.year)
        ids = read_image_set(voc, cfg.image_set)[: cfg.max_images]
        # Read every annotation first: a missing or broken file fails before any feature is computed.
        gt_boxes = {i: read_voc_boxes(voc / "Annotations" / f"{i}.xml") for i in ids}
        p = extractor.patch_size
        rows = ["image_id,x1,y1,x2,y2,best_iou,hit"]
        boxes = []
        feature_s = ncut_s = 0.0
        for image_id in tqdm(ids, desc=f"discovery VOC{cfg.year} {cfg.image_set}", disable=not ctx.progress):
            image_path = voc / "JPEGImages" / f"{image_id}.jpg"

            def compute() -> dict[str, np.ndarray]:
                if not image_path.is_file():
                    raise FileNotFoundError(f"VOC image {image_path} does not exist")
                with Image.open(image_path) as image:
                    x = normalised_tensor(image, extractor)
                height, width = x.shape[1:]
                # zero padding bottom/right in normalised space, as tc:main_tokencut.py
                padded = F.pad(x, (0, -width % p, 0, -height % p))
                out = tokencut_image(extractor, padded, cfg, ctx.device)
                return {
                    "box": np.array(component_box(out.cut.component, out.stride, (height, width))),
                    "component": out.cut.component,
                    "feature_seconds": out.feature_seconds,
                    "ncut_seconds": out.ncut_seconds,
                }

            item = ctx.cache.get_or_compute(f"VOC{cfg.year}/{image_id}", compute)
            feature_s += float(item["feature_seconds"])
            ncut_s += float(item["ncut_seconds"])
            box = [int(v) for v in item["box"]]
            boxes.append(box)
            best = float(box_iou(box, gt_boxes[image_id]).max(initial=0.0))
            rows.append(f"{image_id},{','.join(map(str, box))},{best:.6f},{int(is_hit(box, gt_boxes[image_id]))}")
        atomic_write_text(Path(ctx.out_dir) / cfg.boxes_file, "\n".join(rows) + "\n")
        return {
            "CorLoc": corloc(boxes, [gt_boxes[i] for i in ids]),
            "n_images": float(len(ids)),
            "features_s_per_image": feature_s / len(ids),
            "ncut_s_per_image": ncut_s / len(ids),
        }
