"""Revisited Oxford / Paris image retrieval with DINO's protocol and SRT inside the network (paper Table 4;
PROTOCOLS.md 2.4).

Data (revisitop layout): ``<root>/<dataset>/jpg/<name>.jpg`` and ``<root>/<dataset>/gnd_<dataset>.pkl``
(read with :func:`read_gnd`, a restricted unpickler), ``dataset`` = ``roxford5k`` or ``rparis6k``.

Per image (dino:eval_image_retrieval.py): RGB, ``thumbnail((imsize, imsize))`` with the Lanczos filter
(Pillow's name for the ANTIALIAS DINO asks for: only shrinks, keeps the aspect ratio), normalised with the
backbone's mean and std (ImageNet's for DINO), then cropped at the bottom / right to multiples of the patch
size, which is what DINO's strided patch embedding does implicitly. The descriptor is the final-norm CLS
token; with ``multiscale`` the CLS of scales 1, 1/sqrt(2), 1/2 (bilinear resize of the normalised image,
before the patch crop, as DINO's ``multi_scale``) are averaged and L2-normalised. Queries are used whole,
as DINO does, or cropped to their ``bbx`` first (``crop_queries=true``, revisitop's official protocol).
Both sets are L2-normalised, ranked by cosine similarity, and scored by :mod:`eval.retrieval` (revisitop's
mAP and mP@k, Easy / Medium / Hard, percent).

SRT: the descriptor is a CLS token, so shifting the input and averaging the CLS over the passes would be an
output ensemble, not SRT. When the extractor is SRT (``srt.level > 0``) and ``srt.at_block`` is null, the
task rebuilds it with ``at_block = task.srt_block``: the patch tokens after that block are SRT-ensembled
(pooled back to the token grid) and the remaining blocks and the final norm run once on them, so the CLS
attends to SRT features. The default -2 (the second-to-last block: the last block runs on SRT tokens) is
our choice, the paper does not say. -1 would be degenerate: after the last block nothing mixes the
ensembled patch tokens into the CLS, which then is just its mean over the passes. An explicit
``srt.at_block`` wins; ``task.srt_block=null`` keeps the output ensemble of the CLS. The colour-jitter
ensemble (``srt=jitter``) always averages the CLS (the paper's naive ensemble acts on outputs).

Outputs under the run directory: ``ranks.npy`` (int32 ``[n_db, n_q]``, revisitop's layout),
``per_query.csv`` (AP and P@k per query and protocol, percent, empty when a query has no positive) and
``features.npz`` (``database``, ``queries``, ``imlist``, ``qimlist``; re-score with
``python -m eval.retrieval --features <run>/features.npz --gnd <root>/<dataset>/gnd_<dataset>.pkl``).
Descriptors are cached per image, so a killed run resumes.

Cost: (n_db + n_q) x scales x ``passes`` forward passes of at most imsize x imsize pixels (batch 1, as DINO:
images differ in size; SRT batches its shifted passes), plus O(n_db n_q d) for the similarities. ROxford
has n_db = 4993, n_q = 70; at srt.level=3 that is 49 passes per image and scale. Memory: one image's passes
(``srt.batch_size`` at a time) and the (n_db + n_q) x d descriptors.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from eval.retrieval import UnsafePickleError, evaluate, rank_database, read_gnd, restrict_gnd
from srt.errors import MissingFileError, UserError
from srt.io import atomic_write_bytes, atomic_write_text, check_image, read_image

from .base import DataFiles, FeatureExtractor, RunContext, Task, check_each
from .images import check_run_size

__all__ = ["DATASETS", "RetrievalConfig", "RetrievalTask", "UnsafePickleError", "read_gnd"]

log = logging.getLogger(__name__)

DATASETS = ("roxford5k", "rparis6k")
#: DINO's multi_scale (dino:utils.py)
SCALES = (1.0, 1 / 2**0.5, 0.5)


@dataclass
class RetrievalConfig:
    """Schema of ``conf/task/retrieval.yaml``."""

    dataset: str = "roxford5k"  # roxford5k | rparis6k
    root: str = "???"  # the folder holding <dataset>/jpg/ and <dataset>/gnd_<dataset>.pkl
    imsize: int = 224  # thumbnail bound (DINO's README: 224 for ROxford, 512 for RParis)
    multiscale: bool = False  # average the CLS over scales 1, 1/sqrt(2), 1/2 (DINO's README: false Oxford, true Paris)
    crop_queries: bool = False  # false: whole query images (DINO); true: cropped to their bbx (revisitop)
    srt_block: Optional[int] = -2  # SRT inside the network after this block when srt.at_block is null (see above)
    kappas: list[int] = field(default_factory=lambda: [1, 5, 10])  # k of mP@k
    allow_truncated: bool = False  # true: decode truncated JPEGs as DINO does (Pillow LOAD_TRUNCATED_IMAGES)
    database: Optional[list[str]] = None  # QUICK CHECKS ONLY: a subset of the database by name; null = all
    queries: Optional[list[str]] = None  # QUICK CHECKS ONLY: a subset of the queries by name; null = all

    def validate(self) -> RetrievalConfig:
        if self.dataset not in DATASETS:
            raise UserError(f"task.dataset={self.dataset!r} is not valid; expected one of {', '.join(DATASETS)}")
        if self.root in ("", "???"):
            raise UserError(
                f"task.root is not set; expected the folder holding {self.dataset}/jpg/ and "
                f"{self.dataset}/gnd_{self.dataset}.pkl (revisitop layout)"
            )
        if self.imsize < 1:
            raise UserError(f"task.imsize={self.imsize} is not valid; expected an integer >= 1")
        if not self.kappas or any(k < 1 for k in self.kappas):
            raise UserError(f"task.kappas={self.kappas} is not valid; expected a non-empty list of integers >= 1")
        for key in ("database", "queries"):
            if getattr(self, key) is not None and not getattr(self, key):
                raise UserError(f"task.{key}=[] is not valid; expected null (all) or a non-empty list of names")
        return self


TRUNCATED_HINT = "task.allow_truncated=true decodes truncated JPEGs, as DINO does"


def load_rgb(path: Path, allow_truncated: bool = False) -> Image.Image:
    """The decoded RGB image; MissingFileError / UserError naming the file if it is missing or corrupt."""
    try:
        return read_image(path, "RGB", "image", allow_truncated)
    except MissingFileError:
        raise
    except UserError as e:
        if allow_truncated:
            raise
        raise UserError(f"{e} ({TRUNCATED_HINT})") from e.__cause__


def image_tensor(
    image: Image.Image, imsize: int, mean: Any, std: Any, bbx: Optional[np.ndarray] = None
) -> torch.Tensor:
    """``[3, h, w]``: optionally cropped to ``bbx`` (Pillow rounds the corners), thumbnailed to ``imsize`` with
    Lanczos, normalised. Not yet cropped to patch multiples (multiscale resizes the whole thumbnail first)."""
    if bbx is not None:
        image = image.crop(tuple(float(v) for v in bbx))
    else:
        image = image.copy()  # thumbnail() works in place
    image.thumbnail((imsize, imsize), Image.Resampling.LANCZOS)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)) / torch.tensor(std, dtype=torch.float32).view(
        3, 1, 1
    )


def thumbnail_size(size: tuple[int, int], imsize: int) -> tuple[int, int]:
    """(w, h) of ``Image.thumbnail((imsize, imsize))`` on an image of ``size``, without decoding it (Pillow's
    own rounding: the side that is not the bound is the rounding, floor or ceil, closest to the aspect ratio)."""
    import math

    w, h = size
    if imsize >= w and imsize >= h:
        return w, h
    aspect = w / h

    def closest(number: float, key) -> int:
        return max(min(math.floor(number), math.ceil(number), key=key), 1)

    if 1 >= aspect:  # x / y >= aspect with x = y = imsize
        return closest(imsize * aspect, lambda n: abs(aspect - n / imsize)), imsize
    return imsize, closest(imsize / aspect, lambda n: 0 if n == 0 else abs(aspect - imsize / n))


def smallest_run_size(size: tuple[int, int], imsize: int, multiscale: bool) -> tuple[int, int]:
    """(w, h) of the smallest scale an image of ``size`` runs at: thumbnail, then DINO's scales (interpolate
    floors), before the crop to patch multiples."""
    import math

    w, h = thumbnail_size(size, imsize)
    s = min(SCALES) if multiscale else 1.0
    return (w, h) if s == 1 else (math.floor(w * s), math.floor(h * s))


def clip_box(bbx: Any, size: tuple[int, int]) -> Optional[tuple[float, float, float, float]]:
    """A query box ``[x1, y1, x2, y2]`` clipped to an image of ``size`` (w, h); None if nothing of it is inside."""
    x1, y1, x2, y2 = (float(v) for v in bbx)
    clipped = (max(x1, 0.0), max(y1, 0.0), min(x2, float(size[0])), min(y2, float(size[1])))
    return clipped if clipped[2] > clipped[0] and clipped[3] > clipped[1] else None


def cls_descriptor(extractor: FeatureExtractor, x: torch.Tensor, multiscale: bool, name: str) -> torch.Tensor:
    """The CLS descriptor of one normalised ``[3, h, w]`` image (DINO's single- or multi-scale extraction)."""
    p = extractor.patch_size
    batch = x[None]
    feats = []
    for s in SCALES if multiscale else SCALES[:1]:
        xs = batch if s == 1 else F.interpolate(batch, scale_factor=s, mode="bilinear", align_corners=False)
        h, w = xs.shape[-2] // p * p, xs.shape[-1] // p * p
        if h == 0 or w == 0:
            raise UserError(
                f"image {name} is {xs.shape[-1]}x{xs.shape[-2]} at scale {s:.3f}, smaller than one patch ({p} px)"
            )
        with torch.no_grad():
            feats.append(extractor(xs[..., :h, :w])["cls"][0].float())
    v = torch.stack(feats).mean(dim=0)
    return v / v.norm() if multiscale else v


def srt_inside(extractor: Any, block: Optional[int]) -> Any:
    """``extractor`` with SRT inside the network after ``block``, when it is SRT (level > 0) without an
    ``at_block`` of its own; any other extractor (plain backbone, level 0, jitter ensemble, explicit
    ``srt.at_block``, ``block`` None) is returned unchanged."""
    import srt

    if (
        block is None
        or not isinstance(extractor, srt.StochasticResonance)  # the jitter ensemble is a sibling class
        or extractor.at_block is not None
        or extractor.level == 0
    ):
        return extractor
    try:
        return srt.build_extractor(extractor.wrapped, dataclasses.replace(extractor.config, at_block=block))
    except ValueError as e:
        raise UserError(f"task.srt_block={block} (applied as srt.at_block): {e}") from e


class RetrievalTask(Task):
    """ROxford5k / RParis6k retrieval with revisitop's mAP (see the module docstring)."""

    name: ClassVar[str] = "retrieval"
    Config: ClassVar[type] = RetrievalConfig
    outputs: ClassVar[tuple[str, ...]] = ("cls",)

    @property
    def dataset_dir(self) -> Path:
        return Path(self.cfg.root) / self.cfg.dataset

    @property
    def gnd_path(self) -> Path:
        return self.dataset_dir / f"gnd_{self.cfg.dataset}.pkl"

    def load_ground_truth(self) -> dict[str, Any]:
        """The (subset of the) ground truth, after checking that every image it lists is on disk."""
        cfg: RetrievalConfig = self.cfg
        if not self.dataset_dir.is_dir():
            raise MissingFileError(
                f"{cfg.dataset} folder {self.dataset_dir} does not exist; expected "
                f"{cfg.root}/{cfg.dataset}/{{jpg/,gnd_{cfg.dataset}.pkl}} (revisitop layout)"
            )
        gt = read_gnd(self.gnd_path)
        try:
            gt = restrict_gnd(gt, cfg.database, cfg.queries)
        except ValueError as e:
            raise UserError(f"task.database / task.queries: {e} ({self.gnd_path})") from e
        if not gt["imlist"] or not gt["qimlist"]:
            raise UserError(
                f"{self.gnd_path} lists {len(gt['imlist'])} database images and {len(gt['qimlist'])} queries; "
                "expected at least one of each"
            )
        names = gt["imlist"] + gt["qimlist"]
        missing = [n for n in names if not (self.dataset_dir / "jpg" / f"{n}.jpg").is_file()]
        if missing:
            raise MissingFileError(
                f"{len(missing)} of the {len(names)} images listed in {self.gnd_path} are missing from "
                f"{self.dataset_dir / 'jpg'}, e.g. {', '.join(f'{n}.jpg' for n in missing[:5])}"
            )
        if cfg.crop_queries:
            no_box = [q for q, g in zip(gt["qimlist"], gt["gnd"]) if g["bbx"] is None]
            if no_box:
                raise UserError(
                    f"task.crop_queries=true but {len(no_box)} queries of {self.gnd_path} have no bbx, e.g. {no_box[0]}"
                )
        return gt

    def check_settings(self, model, srt) -> None:
        self._patch_size = model.patch_size
        block = self.cfg.srt_block
        applies = srt.method == "shift" and srt.level > 0 and srt.at_block is None and block is not None
        if applies and not -model.depth <= block < model.depth:
            raise UserError(
                f"task.srt_block={block} is not valid for {model.name} with {model.depth} blocks (it is applied as "
                f"srt.at_block); expected 0..{model.depth - 1} or -{model.depth}..-1, or null (no SRT inside the network)"
            )

    def check_data(self) -> None:
        """The ground truth read safely and checked (:func:`read_gnd`), every listed image on disk and whole
        (:func:`srt.io.check_image`; with ``task.allow_truncated`` a truncated JPEG passes) and, once the patch
        size is known (:meth:`check_settings`), at least one patch at the smallest scale it runs at; with
        ``task.crop_queries`` every query box overlapping its image (boxes over the border are clipped and
        counted). ROxford's 5063 images: about a second."""
        cfg: RetrievalConfig = self.cfg
        gt = self.load_ground_truth()
        boxes = dict(zip(gt["qimlist"], (g["bbx"] for g in gt["gnd"]))) if cfg.crop_queries else {}
        patch = getattr(self, "_patch_size", None)

        def check(name: str) -> None:
            path = self.dataset_dir / "jpg" / f"{name}.jpg"
            try:
                size = check_image(path, "image", cfg.allow_truncated)
            except MissingFileError:
                raise
            except UserError as e:
                if cfg.allow_truncated:
                    raise
                raise UserError(f"{e} ({TRUNCATED_HINT})") from e
            self._check_geometry(path, size, boxes.get(name) if name in boxes else None, patch)

        check_each(list(dict.fromkeys(gt["imlist"] + gt["qimlist"])), check, f"{cfg.dataset} images")

    def _check_geometry(self, path: Path, size: tuple[int, int], bbx: Any, patch: Optional[int]) -> None:
        """A query box that misses its image; an image (or query crop) below one patch at its smallest scale."""
        cfg: RetrievalConfig = self.cfg
        region = size
        if bbx is not None:
            clipped = clip_box(bbx, size)
            if clipped is None:
                raise UserError(
                    f"query box {[float(v) for v in bbx]} of image {path} ({size[0]}x{size[1]}) does not overlap the "
                    f"image; expected a box [x1, y1, x2, y2] inside it (task.crop_queries=true crops to it)"
                )
            region = (max(round(clipped[2]) - round(clipped[0]), 1), max(round(clipped[3]) - round(clipped[1]), 1))
        if patch is not None:
            how = f"{'its query box, ' if bbx is not None else ''}thumbnail to task.imsize={cfg.imsize}" + (
                ", then scale 1/2 (task.multiscale=true)" if cfg.multiscale else ""
            )
            run = smallest_run_size(region, cfg.imsize, cfg.multiscale)
            check_run_size(path, size, run, patch, how)

    def data_files(self) -> DataFiles:
        gt = self.load_ground_truth()
        images = [self.dataset_dir / "jpg" / f"{n}.jpg" for n in dict.fromkeys(gt["imlist"] + gt["qimlist"])]
        return DataFiles.under(self.cfg.dataset, self.cfg.root, [self.gnd_path, *images])

    def run(self, extractor: FeatureExtractor, ctx: RunContext) -> dict[str, float]:
        cfg: RetrievalConfig = self.cfg
        gt = self.load_ground_truth()
        extractor = srt_inside(extractor, cfg.srt_block)
        at_block = getattr(extractor, "at_block", None)
        log.info(
            "retrieval %s: %d database images, %d queries; %d passes per image and scale%s",
            cfg.dataset,
            len(gt["imlist"]),
            len(gt["qimlist"]),
            extractor.passes,
            f"; SRT after block {at_block}, the remaining blocks run on its tokens" if at_block is not None else "",
        )
        seconds: list[float] = []
        query_boxes, n_clipped = self.query_boxes(gt)
        database = self._describe(extractor, ctx, "database", gt["imlist"], [None] * len(gt["imlist"]), seconds)
        queries = self._describe(extractor, ctx, "queries", gt["qimlist"], query_boxes, seconds)
        ctx.cache.items_done()  # a shard run stops here: ranking needs every descriptor
        database, queries = np.stack(database).astype(np.float32), np.stack(queries).astype(np.float32)
        ranks = rank_database(database, queries)
        scores = evaluate(ranks, gt["gnd"], cfg.kappas)
        self._write_outputs(Path(ctx.out_dir), ranks, scores, database, queries, gt)
        clipped = {"n_clipped_query_boxes": float(n_clipped)} if cfg.crop_queries else {}
        return {
            **scores.metrics,
            "n_database": float(len(gt["imlist"])),
            "n_queries": float(len(gt["qimlist"])),
            **clipped,
            "descriptor_s_per_image": float(np.mean(seconds)),
        }

    def query_boxes(self, gt: dict[str, Any]) -> tuple[list[Optional[tuple[float, ...]]], int]:
        """The query boxes the run crops to (None each without ``task.crop_queries``), clipped to their images'
        borders (sizes from the headers), and how many were clipped (a box missing its image fails check_data)."""
        if not self.cfg.crop_queries:
            return [None] * len(gt["qimlist"]), 0
        boxes, n_clipped = [], 0
        for name, g in zip(gt["qimlist"], gt["gnd"]):
            path = self.dataset_dir / "jpg" / f"{name}.jpg"
            clipped = clip_box(g["bbx"], check_image(path, "image", allow_truncated=True))
            if clipped is None:
                raise UserError(f"query box {list(g['bbx'])} of image {path} does not overlap the image")
            n_clipped += clipped != tuple(float(v) for v in g["bbx"])
            boxes.append(clipped)
        if n_clipped:
            log.warning(
                "retrieval: %d of %d query boxes reach over their image's border: clipped", n_clipped, len(boxes)
            )
        return boxes, n_clipped

    def _describe(
        self, extractor, ctx: RunContext, split: str, names: list[str], boxes: list, seconds: list[float]
    ) -> list[np.ndarray]:
        """The descriptor of every image of ``split`` (cached per image; a shard computes its share)."""
        cfg: RetrievalConfig = self.cfg
        out = []
        for name, bbx in tqdm(
            list(zip(names, boxes)), desc=f"retrieval {cfg.dataset} {split}", disable=not ctx.progress
        ):
            if ctx.cache.skips(f"{cfg.dataset}/{split}/{name}"):  # another shard's image (shard=i/n)
                continue
            path = self.dataset_dir / "jpg" / f"{name}.jpg"

            def compute() -> dict[str, Any]:
                start = time.perf_counter()
                x = image_tensor(load_rgb(path, cfg.allow_truncated), cfg.imsize, extractor.mean, extractor.std, bbx)
                v = cls_descriptor(extractor, x.to(ctx.device), cfg.multiscale, str(path))
                return {"descriptor": v.cpu().numpy(), "seconds": time.perf_counter() - start}

            item = ctx.cache.get_or_compute(f"{cfg.dataset}/{split}/{name}", compute)
            seconds.append(float(item["seconds"]))
            out.append(item["descriptor"])
        return out

    @staticmethod
    def _write_outputs(out_dir: Path, ranks, scores, database, queries, gt: dict[str, Any]) -> None:
        """ranks.npy, per_query.csv and features.npz (re-scored by ``python -m eval.retrieval``)."""
        buf = io.BytesIO()
        np.save(buf, ranks.astype(np.int32))
        atomic_write_bytes(out_dir / "ranks.npy", buf.getvalue())
        atomic_write_text(out_dir / "per_query.csv", scores.per_query_csv(gt["qimlist"]))
        buf = io.BytesIO()
        np.savez(
            buf, database=database, queries=queries, imlist=np.array(gt["imlist"]), qimlist=np.array(gt["qimlist"])
        )
        atomic_write_bytes(out_dir / "features.npz", buf.getvalue())
