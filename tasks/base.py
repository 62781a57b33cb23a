"""The task contract: every benchmark task is a small class with the same interface.

``run.py`` knows nothing task-specific. It builds a feature extractor (a backbone, possibly
wrapped in SRT), a :class:`RunContext`, then calls ``Task.from_config(cfg).run(extractor, ctx)``
and writes the returned flat metrics dict to ``metrics.json``.

A feature extractor is any callable ``images [B,3,H,W] -> dict[str, Tensor]`` (the contract of
``srt.load_backbone`` and ``srt.StochasticResonance``) with these attributes:

- ``patch_size``: input H and W must be multiples of it;
- ``stride``: pixels per cell of the returned grids (``patch_size`` for token grids, less for dense SRT);
- ``mean``, ``std``: the normalisation the backbone expects (tasks may override it for protocol parity);
- ``name``: backbone name; ``passes``: forward passes per image (1 for a plain backbone).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Optional, Protocol, TypeVar

import torch

from srt.errors import MissingFileError, UserError, paragraph
from srt.io import FileHashes

if TYPE_CHECKING:
    from srt.backbones import ModelInfo
    from srt.config import SRTConfig

T = TypeVar("T")
R = TypeVar("R")


class FeatureExtractor(Protocol):
    patch_size: int
    stride: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str
    passes: int

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]: ...


@dataclass
class RunContext:
    """What a task gets besides its config and the extractor."""

    out_dir: Path  # the run directory; tasks write predictions under it
    cache: Any  # tasks.item_cache.ItemCache: per-item outputs, so interrupted runs resume
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = True  # show tqdm bars
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. the full resolved config, for tasks that need it


@dataclass(frozen=True)
class DataFiles:
    """The dataset files a run reads: what identifies its data wherever the dataset folder lies.

    ``files`` maps each file's path relative to the dataset folder (the same on every machine) to where it
    is on this one. :meth:`identity` is the dataset's name, the number of files and a sha256 over the sorted
    relative paths with each file's content sha256: moving or copying the folder keeps it; adding, removing,
    renaming or editing a file changes it, also an edit that keeps the size (a fixed index in a pickled
    ground truth, a relabelled mask).

    Why content and not size and modification time: a size misses same-size edits, which are plausible for
    exactly the small files that matter most (ground truth); an mtime changes on every copy, so a dataset
    copied to a cluster's scratch disk would look new and every finished run would be recomputed. Content
    hashes are remembered per file by size and mtime (:class:`srt.io.FileHashes`), so a dataset is read once
    per machine (or copy) until a file changes: about 0.3 ms per 60 KB frame the first time (DAVIS-2017 val,
    ~2000 frames and annotations: under a second; ROxford's 5063 images: a few seconds), then one ``stat``
    per file.
    """

    name: str  # the dataset, e.g. "DAVIS-2017", "ECSSD", "VOC2007"
    files: Mapping[str, Path]

    @classmethod
    def under(cls, name: str, root: str | Path, paths: Iterable[str | Path]) -> DataFiles:
        """The files ``paths`` (inside ``root``), named by their path relative to ``root``."""
        root = Path(root)
        return cls(name, {Path(p).relative_to(root).as_posix(): Path(p) for p in paths})

    def identity(self) -> dict[str, Any]:
        digest = hashlib.sha256()
        with FileHashes() as hashes:
            for rel in sorted(self.files):
                path = self.files[rel]
                if not path.is_file():
                    raise MissingFileError(f"{path} does not exist (a file of the {self.name} dataset)")
                digest.update(f"{rel}\0{hashes.sha256(path)}\n".encode())
        return {"name": self.name, "files": len(self.files), "sha256": digest.hexdigest()}


def check_each(items: Iterable[T], check: Callable[[T], R], what: str) -> list[R]:
    """``[check(item) for item in items]``, but every :class:`srt.errors.UserError` is collected and reported
    at once: one error (the first's type when all have one type) whose message is the first failure in full,
    then the count and the messages of the next few. What a ``check_data`` uses so that a user fixing a
    dataset sees every bad file of it, not one per run."""
    results, failures = [], []
    items = list(items)
    for item in items:
        try:
            results.append(check(item))
        except UserError as e:
            failures.append(e)
    if not failures:
        return results
    if len(failures) == 1:
        raise failures[0]
    kinds = {type(e) for e in failures}
    kind = kinds.pop() if len(kinds) == 1 else UserError
    shown = "; ".join(paragraph(e) for e in failures[1:4])
    more = f"; and {len(failures) - 4} more" if len(failures) > 4 else ""
    raise kind(
        f"{len(failures)} of the {len(items)} {what} failed the data check. {paragraph(failures[0])}; also: {shown}{more}"
    )


class Task(ABC):
    """A benchmark task. Subclasses set ``name``, ``outputs`` and ``Config`` and implement ``run``.

    ``Config`` is a dataclass: the schema of the ``task`` config group, and the one place its defaults
    live (run.py registers them with Hydra). The runner merges the user's ``task`` config into it
    (unknown keys and wrong types are errors), then calls ``Config.validate()`` if defined (invalid values
    are errors), then ``from_config``. ``data_files()`` names the files a run reads: with the settings
    (minus ``data_location_settings``) they are the run's identity.
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    #: backbone outputs the task consumes (names of ``srt.load_backbone(outputs=...)``)
    outputs: ClassVar[tuple[str, ...]] = ("tokens",)
    #: settings that say where the data lies on this machine: left out of the run identity and the item
    #: cache key, which use :meth:`data_files` instead (so a moved dataset finds its finished runs)
    data_location_settings: ClassVar[tuple[str, ...]] = ("root",)

    def __init__(self, cfg: Any):
        self.cfg = cfg

    @classmethod
    def from_config(cls, cfg: Any) -> Task:
        """Build from the validated ``task`` config (an instance of ``cls.Config``)."""
        return cls(cfg)

    def check_settings(self, model: ModelInfo, srt: SRTConfig) -> None:
        """Check the task settings that depend on the model (its depth, width, patch size: ``model``) or on the
        SRT settings (``srt``, validated), before any model is built; raise :class:`srt.errors.UserError`
        naming the setting. The runner calls it while checking settings (:func:`run.plan`)."""

    def check_data(self) -> None:
        """Check the data the run reads, before any model is built and any feature computed; raise
        :class:`srt.errors.UserError` (:class:`srt.errors.MissingFileError` for missing files) naming the file,
        what was found and what was expected.

        The contract: every annotation and ground-truth file the run scores against is opened, decoded and
        checked (sizes against the images, labels against what the metric expects), and every input image
        is checked with :func:`srt.io.check_image` (header and end marker: a truncated or non-image file
        fails here; a full decode of every input would cost as much as reading them for the run). Use
        :func:`check_each` to report every bad file at once. The runner calls it after the finished-run
        check (a finished run reads nothing) and before the model is built."""

    def largest_input(self, model: ModelInfo) -> Optional[tuple[int, int, Optional[int]]]:
        """``(H, W, dense stride)`` of the largest image this run feeds the extractor (the stride of a dense field
        the task itself asks for, else None), for the memory estimate made before any model is built
        (tasks/memory.py); None when it is not known in advance (no estimate is made)."""
        return None

    def check_run_dir(self, run_dir: Path) -> None:
        """Check what an earlier run of this configuration left in ``run_dir`` to resume from (e.g. distill's
        ``checkpoint.pt``: read safely, checked against the configured model), before any model is built; raise
        :class:`srt.errors.UserError` naming the file. The runner calls it after :meth:`check_data`, unless
        ``force=true`` (which discards it). Default: nothing to check."""

    def data_files(self) -> Optional[DataFiles]:
        """The dataset files a run reads (None: the task reads no files); they identify the run's data.

        Default: every file under each location setting (:attr:`data_location_settings`). Override it
        with the files the run actually reads: cheaper, and a file added beside them (another split,
        another resolution) then leaves finished runs finished."""
        roots = {k: Path(getattr(self.cfg, k)) for k in self.data_location_settings if getattr(self.cfg, k, None)}
        files: dict[str, Path] = {}
        for key, root in roots.items():
            if not root.is_dir():
                raise MissingFileError(f"task.{key}={root} is not a folder")
            prefix = f"{key}/" if len(roots) > 1 else ""
            files.update({prefix + p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()})
        return DataFiles(getattr(self.cfg, "dataset", None) or self.name, files) if roots else None

    def data_identity(self) -> Optional[dict[str, Any]]:
        """:meth:`DataFiles.identity` of :meth:`data_files` (recorded in metrics.json as ``data``)."""
        files = self.data_files()
        return None if files is None else files.identity()

    @abstractmethod
    def run(self, extractor: FeatureExtractor, ctx: RunContext) -> dict[str, float]:
        """Run the protocol; return flat metrics (name -> float).

        The expensive per-item work goes through ``ctx.cache.get_or_compute(item_id, compute)`` (resumable), and
        for sharded runs (``shard=i/n``) each item loop starts with ``if ctx.cache.skips(item_id): continue``
        (before the item is read) and ``ctx.cache.items_done()`` follows the loops, before anything that needs
        every item (metrics, ranking, training): a shard run stops there (tasks/item_cache.py)."""

    def record_notes(self) -> dict[str, Any]:
        """What a finished :meth:`run` wants recorded in metrics.json beside its flat metrics (top-level keys that
        are not numbers, e.g. depth's ``excluded_images``: id -> why). Default: nothing."""
        return {}

    def cache_key_config(self) -> Mapping[str, Any]:
        """Task config that changes per-item outputs (keys the item cache, with backbone and srt config and
        the dataset's identity; the data location settings are dropped by the runner).

        Defaults to all of it; override to drop keys that only affect scoring or logging."""
        from dataclasses import asdict, is_dataclass

        return asdict(self.cfg) if is_dataclass(self.cfg) else dict(self.cfg)
