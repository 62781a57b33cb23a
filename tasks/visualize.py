"""Feature pictures (paper Fig. 1): the run's backbone, plain vs SRT features of a few images, PCA to RGB.

    python run.py task=visualize                                   # DINO ViT-S/16, SRT level 3, three photographs
    python run.py task=visualize srt.dispersion=true task.images=[photos/]
    python run.py -m +experiment=fig1                              # the paper's five ViT-B/16, level 7

Each run draws **one backbone** (the runner builds one per run) with :mod:`srt.viz`:

- ``figure.png``: titled with the level and the weights (random weights said so); one row per image; columns
  input | plain | SRT L=<level> (| dispersion with its colour bar, when ``srt.dispersion=true``), the top three
  PCA components as RGB, one basis per backbone fitted on its plain
  and SRT fields together (``task.basis=image``: one per image), robust min-max per component;
- ``level_strip.png`` (``task.strip``): image ``task.strip_image`` at levels 0, step, ... up to ``srt.level``;
- ``panels/``: every panel as its own PNG, and ``figure.json``, the manifest of the run's panels;
- the combined figure of all finished visualize runs under the same results root that differ only in the
  backbone (``task.combine``): ``<results_root>/visualize/figure-<label>-<hash>.png`` and
  ``level_strip-<label>-<hash>.png`` (label: method and weights, e.g. ``srt-L3-random``),
  backbones in the paper's Fig. 1 order (CLIP, supervised, DINO, SAM, MAE, then the rest by name). Every run
  refreshes it when it finishes (under a file lock), so after a sweep over backbones it holds them all.

Why one backbone per run and a combiner, rather than a task that loads several backbones: every run then
keeps the runner's guarantees per backbone -- weights resolved and recorded in metrics.json
(``backbone.pretrained`` may name a file), the config-hashed run directory, skip-when-finished and per-job
resume of a sweep, parallel or SLURM launchers -- and the figure only needs the panels, which the runs save.

Images (``task.images``): files, folders (searched recursively) or ``skimage:<name>`` photographs that
scikit-image ships (default: astronaut, coffee, chelsea), each cut to its centre square and resized to
``task.image_size`` (the official notebook squashes to 224 x 224 instead). The official notebook normalises
every model with the ImageNet statistics; here each backbone uses its own (CLIP's, the supervised ViT's 0.5).

Metrics (descriptive, not a benchmark): ``cosine_plain_srt`` (mean per-pixel cosine between the plain and
SRT fields), ``pca_explained`` (variance fraction the 3 components capture), ``dispersion_mean``.
Cost: :mod:`srt.viz` (the SRT passes: n images x passes, plus the strip's sum over its levels of passes).
Each image's fields (and each strip level's) go to the run's item cache, float16, about 2 C (S/stride)^2
bytes an item (ViT-B at 224 px, stride 1: 77 MB): a run holds one image's fields in memory and an
interrupted run resumes at the next image; ``task.stride=2`` divides the disk use by 4.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

import srt
from eval.run_record import method_tag
from srt import viz
from srt.errors import UserError
from srt.io import atomic_save_png, atomic_write_json, check_image, file_lock, read_image

from .base import DataFiles, FeatureExtractor, RunContext, Task, check_each
from .environment import now_iso
from .images import as_entries, check_run_size, item_ids, list_images
from .run_identity import config_hash, srt_key_part, weights_tag

log = logging.getLogger(__name__)

BASES = ("backbone", "image")
MANIFEST = "figure.json"
#: the paper's Fig. 1 column order; other backbones follow by name
COLUMN_ORDER = ("clip_vitb16", "sup_vitb16", "dino_vitb16", "sam_vitb16", "mae_vitb16")


@dataclass
class VisualizeConfig:
    """The ``task.*`` settings of task=visualize."""

    images: Any = None  # a path or a list of files / folders / skimage:<name>; null = srt.viz.DEFAULT_IMAGES
    image_size: int = 224  # panels are image_size x image_size (a multiple of the patch size)
    stride: int = 1  # pixels per cell of the SRT field (a divisor of the patch size; 1 = pixel resolution)
    basis: str = "backbone"  # backbone: one PCA basis over all images | image: one per image
    quantile: float = 0.01  # robust min-max: each component scaled between these quantiles
    max_fit_samples: int = 16384  # pixel vectors the PCA is fitted on (a seeded subset when there are more)
    seed: int = 0  # seeds that subset
    strip: bool = True  # also draw the level strip
    strip_image: int = 0  # which image (index into images) the strip shows
    combine: bool = True  # refresh the combined figure of the runs that differ only in the backbone

    def validate(self) -> VisualizeConfig:
        if self.images is not None:
            as_entries(self.images, "task.images")
        for name in ("image_size", "stride", "max_fit_samples"):
            if getattr(self, name) < 1:
                raise UserError(f"task.{name}={getattr(self, name)} is not valid; expected an integer >= 1")
        if self.basis not in BASES:
            raise UserError(f"task.basis={self.basis!r} is not valid; expected one of {', '.join(BASES)}")
        if not 0 <= self.quantile < 0.5:
            raise UserError(f"task.quantile={self.quantile} is not valid; expected 0 <= quantile < 0.5")
        if self.strip_image < 0:
            raise UserError(f"task.strip_image={self.strip_image} is not valid; expected an index >= 0")
        return self

    def image_list(self) -> list:
        entries = list(viz.DEFAULT_IMAGES) if self.images is None else as_entries(self.images, "task.images")
        found = list_images(entries, "task.images")
        if self.strip and self.strip_image >= len(found):
            raise UserError(
                f"task.strip_image={self.strip_image} is not valid: task.images holds {len(found)} images "
                f"(expected 0..{len(found) - 1})"
            )
        return found


def plain_and_config(extractor: FeatureExtractor) -> tuple[Any, srt.SRTConfig]:
    """The plain backbone inside the runner's extractor, and its SRT settings."""
    if isinstance(extractor, srt.JitterEnsemble):
        raise UserError("task=visualize draws SRT features; srt.method=jitter is not valid here (use srt.method=shift)")
    if isinstance(extractor, srt.StochasticResonance):
        return extractor.wrapped, extractor.config
    return extractor, srt.SRTConfig(level=0)


class VisualizeTask(Task):
    name: ClassVar[str] = "visualize"
    Config: ClassVar[type] = VisualizeConfig
    outputs: ClassVar[tuple[str, ...]] = ("tokens",)
    #: where the images lie; the run identity uses the image files themselves (:meth:`data_files`)
    data_location_settings: ClassVar[tuple[str, ...]] = ("images",)

    def check_settings(self, model: srt.ModelInfo, srt_cfg: srt.SRTConfig) -> None:
        cfg, p = self.cfg, model.patch_size
        self._patch_size = p
        if srt_cfg.method == "jitter":
            raise UserError(
                "task=visualize draws SRT features; srt.method=jitter is not valid here (use srt.method=shift)"
            )
        if cfg.image_size % p:
            raise UserError(
                f"task.image_size={cfg.image_size} is not a multiple of the patch size {p} of {model.name}; "
                f"use e.g. {cfg.image_size - cfg.image_size % p or p}"
            )
        if p % cfg.stride:
            raise UserError(
                f"task.stride={cfg.stride} is not valid; expected a divisor of the patch size {p}: "
                f"{[s for s in range(1, p + 1) if p % s == 0]}"
            )

    def largest_input(self, model: srt.ModelInfo) -> tuple[int, int, int]:
        """Every image is drawn at ``task.image_size`` squared, its SRT field at ``task.stride`` (memory estimate)."""
        return self.cfg.image_size, self.cfg.image_size, self.cfg.stride

    def check_data(self) -> None:
        """Every image checked whole (:func:`srt.io.check_image`: header and end marker)."""
        self.images = self.cfg.image_list()
        patch = getattr(self, "_patch_size", None)

        def check(path: Path) -> None:
            size = check_image(path, "image")
            if patch is not None:  # the stated minimum: one patch (less is upscaled from under one token of detail)
                how = f"its centre square, resized to task.image_size={self.cfg.image_size}; the stated minimum is one patch"
                check_run_size(path, size, (min(size),) * 2, patch, how)

        check_each(self._files(self.images), check, "task.images")

    @staticmethod
    def _files(images: list) -> list[Path]:
        return [viz.skimage_file(str(im)) if str(im).startswith(viz.SKIMAGE_PREFIX) else Path(im) for im in images]

    def data_files(self) -> DataFiles:
        images = self.cfg.image_list()
        return DataFiles("images", dict(zip(item_ids(images), self._files(images))))

    def run(self, extractor: FeatureExtractor, ctx: RunContext) -> dict[str, float]:
        cfg = self.cfg
        images = getattr(self, "images", None) or cfg.image_list()
        fn, srt_cfg = plain_and_config(extractor)
        p = fn.patch_size
        if cfg.image_size % p:
            raise UserError(
                f"task.image_size={cfg.image_size} is not a multiple of the patch size {p} of {fn.name}; "
                f"use e.g. {cfg.image_size - cfg.image_size % p or p}"
            )
        if p % cfg.stride:
            raise UserError(f"task.stride={cfg.stride} is not valid; expected a divisor of the patch size {p}")
        inputs = [viz.square_image(viz.read_image(str(im)), cfg.image_size) for im in images]
        ids = item_ids(images)
        fields = _Fields(cfg, fn, srt_cfg, inputs, ids, ctx)
        if ctx.cache.shard is not None:
            fields.compute_share()
            ctx.cache.items_done()  # a shard run stops here
        image_columns, strip_columns, levels = fields.image_columns, fields.strip_columns, fields.levels
        columns = image_columns(list(range(len(ids))))
        out = ctx.out_dir
        input_panels = [viz.read_image(im) for im in inputs]
        manifest: dict[str, Any] = {
            "group": self.group_key(ctx),
            "backbone": str(fn.name),
            "weights": str(getattr(fn, "weights", "")),
            "images": [str(im) for im in images],
            "inputs": [self._save(out, f"panels/{i}/input.png", a) for i, a in zip(ids, input_panels)],
            "columns": columns.labels,
            "panels": [
                [self._save(out, f"panels/{i}/{_slug(lb)}.png", a) for lb, a in zip(columns.labels, row)]
                for i, row in zip(ids, columns.panels)
            ],
        }
        # the titles name the level and the weights; scales: the colour bar of a value-coded column (dispersion)
        manifest["title"] = viz.fig1_title(srt_cfg.level, [manifest["weights"]], srt_cfg.dispersion, srt_cfg.step)
        manifest["scales"] = columns.scales
        atomic_save_png(out / "figure.png", viz.figure_from_columns(input_panels, [columns], manifest["title"]))
        if cfg.strip:
            strip = strip_columns(levels)
            manifest["strip"] = {
                "input": manifest["inputs"][cfg.strip_image],
                "columns": strip.labels,
                "panels": [
                    self._save(out, f"panels/strip/{_slug(lb)}.png", a) for lb, a in zip(strip.labels, strip.panels[0])
                ],
                "title": viz.strip_title([manifest["weights"]]),
            }
            strip_png = viz.strip_from_columns(input_panels[cfg.strip_image], [strip], manifest["strip"]["title"])
            atomic_save_png(out / "level_strip.png", strip_png)
        manifest["finished"] = now_iso()
        atomic_write_json(out / MANIFEST, manifest)
        metrics = {"n_images": float(len(images)), **columns.stats}
        if cfg.combine and ctx.extras.get("config", {}).get("paths", {}).get("results_root"):
            root = Path(ctx.extras["config"]["paths"]["results_root"]) / self.name
            metrics["n_backbones_combined"] = float(combine_runs(root, manifest["group"]))
        return metrics

    def cache_key_config(self) -> dict[str, Any]:
        # cached items are one image's fields: only the panel size and the field's stride change them
        return {"image_size": self.cfg.image_size, "stride": self.cfg.stride}

    def group_key(self, ctx: RunContext) -> str:
        """What runs drawn into one combined figure share: task and SRT settings, weights kind and model kwargs.
        The label in front (method tag and weights, e.g. ``srt-L3-random``) says in the file name what it shows."""
        config = ctx.extras.get("config", {})
        backbone = {k: v for k, v in config.get("backbone", {}).items() if k != "name"}
        task = {k: v for k, v in dataclasses.asdict(self.cfg).items() if k != "combine"}
        key = config_hash({"task": task, "srt": srt_key_part(config.get("srt", {})), "backbone": backbone}, 12)
        pretrained = backbone.get("pretrained", True)
        weights = (
            "pretrained" if pretrained is True else "random" if pretrained in (False, None) else weights_tag(pretrained)
        )
        return f"{method_tag(config.get('srt', {}), config.get('task', {}))}-{weights}-{key}"

    @staticmethod
    def _save(out: Path, rel: str, array: np.ndarray) -> str:
        atomic_save_png(out / rel, array)
        return rel


def _slug(label: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in label).strip("_").lower()


class _Fields:
    """The cached fields of a visualize run as figure columns: the plain | SRT columns of chosen images, the
    strip image's at chosen levels (each image's fields one item of the cache: resumable, one image in memory)."""

    def __init__(self, cfg: VisualizeConfig, fn, srt_cfg, inputs: list, ids: list[str], ctx: RunContext):
        self.cfg, self.fn, self.srt_cfg, self.inputs, self.ids, self.ctx = cfg, fn, srt_cfg, inputs, ids, ctx
        self.fit = dict(quantile=cfg.quantile, max_fit_samples=cfg.max_fit_samples, seed=cfg.seed)
        self.levels = viz.strip_levels(srt_cfg.level, srt_cfg.step) if cfg.strip else []
        self.strip_key = f"strip/{ids[cfg.strip_image]}" if cfg.strip else ""

    def store(self, key: str, compute):
        return self.ctx.cache.get_or_compute(f"fields/{key}", compute)

    def image_columns(self, chosen: list[int]) -> viz.Columns:  # the plain | SRT columns of these images
        cfg = self.cfg
        return viz.backbone_columns(
            [self.inputs[i] for i in chosen],
            self.fn,
            self.srt_cfg,
            cfg.stride,
            "tokens",
            cfg.basis,
            progress=self.ctx.progress,
            store=self.store,
            keys=[self.ids[i] for i in chosen],
            **self.fit,
        )

    def strip_columns(self, chosen: list[int]) -> viz.Columns:  # the strip image's fields at these levels
        image, key, cfg = self.inputs[self.cfg.strip_image], self.strip_key, self.cfg
        return viz.level_columns(
            image, self.fn, chosen, self.srt_cfg, cfg.stride, "tokens", store=self.store, key=key, **self.fit
        )

    def compute_share(self) -> None:
        """A shard run computes its share of the fields (the items); the colours are fitted on all of them, so
        the columns it builds on the way are dropped and the figure is left to the run that has them all."""
        skips = self.ctx.cache.skips
        mine = [i for i in range(len(self.ids)) if not skips(f"fields/{self.ids[i]}")]
        mine_levels = [lv for lv in self.levels if not skips(f"fields/{self.strip_key}/L{lv}")]
        if mine:
            self.image_columns(mine)
        if mine_levels:
            self.strip_columns(mine_levels)


def _read_png(path: Path) -> np.ndarray:
    return np.asarray(read_image(path, "RGB", "panel")).copy()  # the project's one image reader


def _order(name: str) -> tuple[int, str]:
    return (COLUMN_ORDER.index(name), "") if name in COLUMN_ORDER else (len(COLUMN_ORDER), name)


def combine_runs(root: Path, group: str) -> int:
    """Write ``<root>/figure-<group>.png`` (and ``level_strip-<group>.png``) from every finished visualize run
    under ``root`` with this group key, one per backbone (the latest); return how many backbones it shows."""
    with file_lock(root / f".combine-{group}"):
        latest: dict[str, tuple[str, Path, dict]] = {}
        for path in root.rglob(MANIFEST):
            try:
                m = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                log.warning("visualize: skipping unreadable %s (%s)", path, e)
                continue
            if m.get("group") not in (group, group.rsplit("-", 1)[-1]):  # also a run from before the label
                continue
            if m["backbone"] not in latest or m["finished"] > latest[m["backbone"]][0]:
                latest[m["backbone"]] = (m["finished"], path.parent, m)
        names = sorted(latest, key=_order)
        if not names:
            return 0
        runs = [latest[n][1:] for n in names]
        first_dir, first = runs[0]
        inputs = [_read_png(first_dir / rel) for rel in first["inputs"]]
        columns = [
            viz.Columns(
                m["backbone"],
                m["columns"],
                [[_read_png(d / rel) for rel in row] for row in m["panels"]],
                {},
                {k: tuple(v) for k, v in m.get("scales", {}).items()},
            )
            for d, m in runs
        ]
        # the runs of a group share the level and the weights kind (the group key), so the first's title holds
        atomic_save_png(root / f"figure-{group}.png", viz.figure_from_columns(inputs, columns, first.get("title")))
        strips = [(d, m) for d, m in runs if "strip" in m]
        if strips:
            strip_columns = [
                viz.Columns(
                    m["backbone"], m["strip"]["columns"], [[_read_png(d / r) for r in m["strip"]["panels"]]], {}
                )
                for d, m in strips
            ]
            strip_input = _read_png(strips[0][0] / strips[0][1]["strip"]["input"])
            strip_png = viz.strip_from_columns(strip_input, strip_columns, strips[0][1]["strip"].get("title"))
            atomic_save_png(root / f"level_strip-{group}.png", strip_png)
        log.info("visualize: combined %d backbone(s) into %s", len(names), root / f"figure-{group}.png")
        return len(names)
