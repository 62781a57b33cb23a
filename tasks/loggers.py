"""The ``logger`` config group: where a run is reported besides its metrics.json (``logger=none|csv|wandb``)."""

from __future__ import annotations

import importlib.util
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from eval.run_record import RunRecord
from srt.errors import UserError
from srt.io import atomic_write_text, file_lock


@dataclass
class LoggerConfig:
    """Schema of the ``logger`` config group."""

    name: str = "none"  # none | csv | wandb
    path: Optional[str] = None  # csv: the file rows are appended to
    project: str = "srt-bench"  # wandb
    entity: Optional[str] = None  # wandb
    mode: str = "offline"  # wandb: offline | online | disabled (conf sets it from WANDB_MODE)
    tags: list = field(default_factory=list)

    def validate(self) -> LoggerConfig:
        if self.name not in LOGGERS:
            raise UserError(f"logger.name={self.name!r} is not valid; expected one of {', '.join(LOGGERS)}")
        if self.name == "csv" and not self.path:
            raise UserError("logger.path is required for logger=csv (the CSV file rows are appended to)")
        if self.name == "wandb" and self.mode not in ("offline", "online", "disabled"):
            raise UserError(f"logger.mode={self.mode!r} is not valid; expected offline, online or disabled")
        if self.name == "wandb" and importlib.util.find_spec("wandb") is None:  # else it fails after the run
            raise UserError(
                "logger=wandb needs the wandb package, which is not installed: pip install wandb (or pip install -e '.[wandb]')"
            )
        return self


class CsvLogger:
    """Appends one row per run to a CSV; new metric columns widen the file (rewritten atomically)."""

    def __init__(self, cfg: LoggerConfig):
        self.path = Path(cfg.path)

    def log_run(self, record: RunRecord, run_dir: Path) -> None:
        import csv

        row = {k: ("" if v is None else v) for k, v in record.summary_row().items()}
        with file_lock(self.path):
            rows, fields = [], []
            if self.path.is_file():
                with open(self.path, newline="", encoding="utf-8") as f:
                    reader = csv.DictReader(f)
                    fields = list(reader.fieldnames or [])
                    rows = list(reader)
            fields += [k for k in row if k not in fields]
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerows(rows + [row])
            atomic_write_text(self.path, buf.getvalue())


class WandbLogger:
    """Logs config, metrics, a one-row metrics table and the run's table/plot files to Weights & Biases.

    Offline unless WANDB_MODE (or logger.mode) says otherwise: it never needs the network;
    ``wandb sync <run_dir>/wandb/offline-run-*`` uploads later.
    """

    def __init__(self, cfg: LoggerConfig):
        self.cfg = cfg

    def log_run(self, record: RunRecord, run_dir: Path) -> None:
        os.environ.setdefault("WANDB_MODE", self.cfg.mode)
        import wandb

        cfg = record.config
        run = wandb.init(
            project=self.cfg.project,
            entity=self.cfg.entity,
            mode=self.cfg.mode,
            dir=str(run_dir),
            name=record.run_dir or str(run_dir),
            group=str(cfg["task"].get("name")),
            tags=list(self.cfg.tags),
            config=cfg,
            reinit="finish_previous",
        )
        try:
            run.log(dict(record.metrics))
            run.summary.update({"passes": record.passes, "wall_time_s": record.wall_time_s})
            row = record.summary_row()
            run.log({"results": wandb.Table(columns=list(row), data=[[_wandb_cell(v) for v in row.values()]])})
            for f in sorted(run_dir.iterdir()):
                if f.is_file() and f.suffix in (".json", ".png", ".csv", ".md", ".tex"):
                    run.save(str(f), base_path=str(run_dir), policy="now")
        finally:
            run.finish()


def _wandb_cell(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)


class _NoLogger:
    def __init__(self, cfg: LoggerConfig):
        pass

    def log_run(self, record: RunRecord, run_dir: Path) -> None:
        pass


LOGGERS: dict[str, type] = {"none": _NoLogger, "csv": CsvLogger, "wandb": WandbLogger}


def make_logger(cfg: LoggerConfig):
    return LOGGERS[cfg.name](cfg)
