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

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch


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
    cache: Any  # tasks.results.ItemCache: per-item outputs, so interrupted runs resume
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = True  # show tqdm bars
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. the full resolved config, for tasks that need it


class Task(ABC):
    """A benchmark task. Subclasses set ``name``, ``outputs`` and ``Config`` and implement ``run``.

    ``Config`` is a dataclass: the schema of the ``task`` config group. The runner merges the
    user's ``task`` config into it (unknown keys and wrong types are errors), then calls
    ``Config.validate()`` if defined (invalid values are errors), then ``from_config``.
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    #: backbone outputs the task consumes (names of ``srt.load_backbone(outputs=...)``)
    outputs: ClassVar[tuple[str, ...]] = ("tokens",)

    def __init__(self, cfg: Any):
        self.cfg = cfg

    @classmethod
    def from_config(cls, cfg: Any) -> Task:
        """Build from the validated ``task`` config (an instance of ``cls.Config``)."""
        return cls(cfg)

    def check_data(self) -> None:
        """Raise FileNotFoundError / ValueError naming what is missing, before any model is built.

        The runner calls it first, so a misplaced dataset costs seconds, not a model load."""

    @abstractmethod
    def run(self, extractor: FeatureExtractor, ctx: RunContext) -> dict[str, float]:
        """Run the protocol; return flat metrics (name -> float)."""

    def cache_key_config(self) -> Mapping[str, Any]:
        """Task config that changes per-item outputs (keys the item cache, with backbone and srt config).

        Defaults to all of it; override to drop keys that only affect scoring or logging."""
        from dataclasses import asdict, is_dataclass

        return asdict(self.cfg) if is_dataclass(self.cfg) else dict(self.cfg)
