"""The results store: where a run's outputs go, how they are written, and what is recorded about the run.

- A run's directory is a deterministic function of its config (:func:`run_subdir`), so re-running the
  same command finds the same directory: a finished run is skipped, an interrupted one resumes.
- Everything is written atomically (temp file in the same directory + ``os.replace``): a killed run
  leaves either the old file or the new one, never half a file. Tasks use :func:`atomic_write_bytes`,
  :func:`atomic_write_text`, :func:`atomic_write_json`, :func:`atomic_save_png` for their own outputs.
- :class:`ItemCache` keeps per-item outputs (dicts of arrays) under the run directory, keyed by a hash
  of the config parts that change them; ``get_or_compute`` is how a task makes its loop resumable.
- :func:`write_metrics` writes ``metrics.json``: metrics, resolved config, backbone and weights source,
  SRT settings, passes, timings, peak memory, library versions, git revision, host.
- :class:`CsvLogger` and :class:`WandbLogger` are the ``logger=csv|wandb`` options.

Importing this module registers the OmegaConf resolver ``srt_run_subdir`` used by ``conf/config.yaml``
for ``hydra.run.dir`` / ``hydra.sweep.subdir`` (registered at import so that parallel launchers'
worker processes, which import this module when they unpickle the job, have it too).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import platform
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import numpy as np

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
SCHEMA_VERSION = 1
#: SRT settings that change speed or memory, not the features: left out of run and cache keys
SRT_RESOURCE_KEYS = ("batch_size", "median_budget_gb")
REPO_ROOT = Path(__file__).resolve().parents[1]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: mkstemp creates 0600 files; results get the permissions a plain open() would give them
_FILE_MODE = 0o666 & ~_current_umask()


# ----------------------------------------------------------------------------------------------
# Atomic writes


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def to_json(obj: Any) -> str:
    """JSON text; NaN/inf are written as null (strict JSON readers reject NaN)."""

    def clean(o: Any) -> Any:
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, Mapping):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if isinstance(o, np.generic):
            return clean(o.item())
        return o

    return json.dumps(clean(obj), indent=2, sort_keys=False, default=_json_default, allow_nan=False) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, to_json(obj))


def atomic_save_png(
    path: str | os.PathLike, array: np.ndarray, palette: Optional[np.ndarray | list[int]] = None
) -> Path:
    """Save a uint8 (H,W) / (H,W,3) array, or a uint16 (H,W) array, as a PNG atomically.

    With ``palette`` (a flat list of up to 768 ints or an (N,3) array) a 2-D uint8 array is written as an
    indexed (mode "P") PNG, the format of DAVIS annotations and predictions.
    """
    from PIL import Image

    array = np.asarray(array)
    if array.dtype == np.uint16 and array.ndim == 2:
        image = Image.fromarray(array)
    elif array.dtype == np.uint8 and array.ndim in (2, 3):
        image = Image.fromarray(array)
    else:
        raise ValueError(
            f"atomic_save_png({path}): expected uint8 [H,W] or [H,W,3], or uint16 [H,W]; "
            f"got {array.dtype} {array.shape}"
        )
    if palette is not None:
        if array.ndim != 2 or array.dtype != np.uint8:
            raise ValueError(f"atomic_save_png({path}): a palette needs a uint8 [H,W] index array")
        image = image.convert("P") if image.mode != "P" else image
        image.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


# ----------------------------------------------------------------------------------------------
# Hashes and the run directory


def config_hash(obj: Any, length: int = 16) -> str:
    """A stable short hash of a JSON-able object (key order does not matter)."""
    text = json.dumps(obj, sort_keys=True, default=_json_default, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def _plain(node: Any) -> Any:
    """Resolved plain containers from an OmegaConf node (or pass plain data through)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return dataclasses.asdict(node)
    return node


def srt_key_part(srt_cfg: Any) -> dict:
    """The SRT settings that change features (resource settings dropped)."""
    return {k: v for k, v in dict(_plain(srt_cfg)).items() if k not in SRT_RESOURCE_KEYS}


def run_key(task_cfg: Any, backbone_cfg: Any, srt_cfg: Any) -> dict:
    """What identifies a run's results: the whole task config, the backbone config, the SRT settings."""
    return {"task": _plain(task_cfg), "backbone": _plain(backbone_cfg), "srt": srt_key_part(srt_cfg)}


def method_tag(method: str, level: Any) -> str:
    """Directory-name form of the method: ``baseline`` (shift, level 0), ``srt-L3``, ``jitter-L3``.

    Never raises on bad values (Hydra resolves the run directory before the runner checks the settings,
    and the runner's error names the setting)."""
    try:
        level = int(level)
    except (TypeError, ValueError):
        level = _path_part(level)
    if method == "shift":
        return "baseline" if level == 0 else f"srt-L{level}"
    return f"{_path_part(method)}-L{level}"


def _path_part(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", str(value)).strip("_") or "_"


def run_subdir(task_cfg: Any, backbone_cfg: Any, srt_cfg: Any) -> str:
    """``<task>[/<dataset>]/<backbone>[-random]/<method tag>-<hash>``: a deterministic function of the config.

    The readable parts say what the run is; the hash (of :func:`run_key`) keeps runs that differ in any
    other setting (a task option, ``srt.fill``, a checkpoint file...) apart.
    """
    task, backbone, srt_ = _plain(task_cfg), _plain(backbone_cfg), _plain(srt_cfg)
    parts = [_path_part(task.get("name", "task"))]
    if task.get("dataset") not in (None, ""):
        parts.append(_path_part(task["dataset"]))
    weights = backbone.get("pretrained", True)
    parts.append(
        _path_part(backbone.get("name", "backbone"))
        + ("" if weights is True else "-random" if weights in (False, None) else "-file")
    )
    tag = method_tag(srt_.get("method", "shift"), srt_.get("level", 0))
    parts.append(f"{tag}-{config_hash(run_key(task, backbone, srt_), 8)}")
    return "/".join(parts)


def _resolve_run_subdir(*, _root_: Any) -> str:
    return run_subdir(_root_.task, _root_.backbone, _root_.srt)


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("srt_run_subdir", _resolve_run_subdir, replace=True)


register_resolvers()
# conf/hydra/launcher/{joblib,submitit_slurm}.yaml set our defaults for the plugins' launchers; Hydra merges
# them into the plugins' schemas of the same name and warns each time (also in launcher worker processes,
# which import this module but not run.py).
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/\S+' is validated against ConfigStore schema")


# ----------------------------------------------------------------------------------------------
# Per-item cache


_ITEM_ID = re.compile(r"^[A-Za-z0-9._+=-]+(/[A-Za-z0-9._+=-]+)*$")


class ItemCache:
    """Per-item outputs under ``root``, so that an interrupted run resumes where it stopped.

    ``get_or_compute(item_id, fn)`` returns the stored dict for ``item_id`` if there is one, else calls
    ``fn()`` (a dict of numpy arrays, tensors or numbers), stores it atomically as ``<item_id>.npz`` and
    returns it. Either way the caller gets numpy arrays, so a resumed run sees exactly what a fresh
    one does. ``item_id`` may contain ``/`` (e.g. ``"blackswan/00003"``), stored as subdirectories.

    ``computed`` and ``loaded`` count the items of this process (recorded in ``metrics.json``).
    """

    def __init__(self, root: str | os.PathLike, key: Optional[Mapping[str, Any]] = None):
        self.root = Path(root)
        self.key = dict(key) if key is not None else None
        self.computed = 0
        self.loaded = 0
        self.root.mkdir(parents=True, exist_ok=True)
        if self.key is not None:
            key_file = self.root / "key.json"
            if not key_file.exists():
                atomic_write_json(key_file, self.key)

    def path(self, item_id: str) -> Path:
        item_id = str(item_id)
        if not _ITEM_ID.match(item_id) or any(p in (".", "..") for p in item_id.split("/")):
            raise ValueError(
                f"item id {item_id!r} is not valid; expected letters, digits and ._+=- in /-separated parts"
            )
        return self.root / f"{item_id}.npz"

    def __contains__(self, item_id: str) -> bool:
        return self.path(item_id).is_file()

    def get_or_compute(self, item_id: str, fn: Callable[[], Mapping[str, Any]]) -> dict[str, np.ndarray]:
        path = self.path(item_id)
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as data:
                    out = {k: data[k] for k in data.files}
                self.loaded += 1
                return out
            except Exception as e:  # noqa: BLE001 - an unreadable entry is recomputed, loudly
                log.warning("item cache: %s is unreadable (%s); recomputing it", path, e)
        value = fn()
        if not isinstance(value, Mapping):
            raise TypeError(
                f"item cache: the function for item {item_id!r} returned {type(value).__name__}; "
                "expected a dict of arrays"
            )
        out = {str(k): _to_numpy(v) for k, v in value.items()}
        buf = io.BytesIO()
        np.savez(buf, **out)
        atomic_write_bytes(path, buf.getvalue())
        self.computed += 1
        return out

    def clear(self) -> None:
        """Forget every stored item (``force=true``)."""
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        if self.key is not None:
            atomic_write_json(self.root / "key.json", self.key)

    def __len__(self) -> int:
        return sum(1 for _ in self.root.rglob("*.npz"))


def _to_numpy(value: Any) -> np.ndarray:
    try:
        import torch

        if isinstance(value, torch.Tensor):
            return value.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    arr = np.asarray(value)
    if arr.dtype == object:
        raise TypeError(f"item cache: cannot store a value of type {type(value).__name__} (object array)")
    return arr


def cache_key(backbone_cfg: Any, srt_cfg: Any, task_key: Mapping[str, Any]) -> dict:
    """The item cache key: backbone config + feature-changing SRT settings + the task's cache_key_config()."""
    return {"backbone": _plain(backbone_cfg), "srt": srt_key_part(srt_cfg), "task": _plain(dict(task_key))}


def item_cache_for(
    run_dir: str | os.PathLike, backbone_cfg: Any, srt_cfg: Any, task_key: Mapping[str, Any]
) -> ItemCache:
    key = cache_key(backbone_cfg, srt_cfg, task_key)
    return ItemCache(Path(run_dir) / "cache" / config_hash(key, 16), key=key)


# ----------------------------------------------------------------------------------------------
# Run metadata and metrics.json


def git_revision(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """Commit and dirty flag of the checkout the code runs from (None when not a git checkout)."""

    def git(*args: str) -> Optional[str]:
        try:
            r = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def library_versions() -> dict[str, Optional[str]]:
    from importlib import metadata

    out: dict[str, Optional[str]] = {"python": platform.python_version()}
    for dist in (
        "srt-bench",
        "torch",
        "torchvision",
        "timm",
        "numpy",
        "scipy",
        "pandas",
        "opencv-python-headless",
        "scikit-image",
        "pysodmetrics",
        "hydra-core",
        "omegaconf",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def peak_memory() -> dict[str, Optional[float]]:
    """Peak resident memory of this process (MiB; over its whole life, so across the jobs of a
    sequential multirun) and, on CUDA, the peak allocated by torch since the last reset."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mib = rss / 1024 if sys.platform != "darwin" else rss / (1024 * 1024)  # KiB on Linux, bytes on macOS
    cuda = None
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            cuda = torch.cuda.max_memory_allocated() / (1024 * 1024)
    except ImportError:  # pragma: no cover
        pass
    return {
        "process_peak_rss_mib": round(rss_mib, 1),
        "cuda_peak_allocated_mib": None if cuda is None else round(cuda, 1),
    }


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def config_variant(
    values: Mapping[str, Any], defaults: Mapping[str, Any], prefix: str, skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Settings that differ from their defaults, as ``{"<prefix>.<key>": value}`` (shown in tables)."""
    out = {}
    for k, v in values.items():
        if k in skip:
            continue
        if k not in defaults or defaults[k] != v:
            out[f"{prefix}.{k}"] = v
    return out


def write_metrics(run_dir: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Write ``<run_dir>/metrics.json`` atomically; ``record`` is built by the runner (see run.py)."""
    return atomic_write_json(Path(run_dir) / METRICS_FILE, {"schema": SCHEMA_VERSION, **record})


def read_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """Read a metrics.json; ValueError naming the file when it is not a valid record."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable metrics.json ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    for key in ("metrics", "config"):
        if not isinstance(data.get(key), dict):
            raise ValueError(f"{path}: missing or invalid {key!r} (expected an object)")
    return data


def finished_run(run_dir: str | os.PathLike, key_hash: str) -> Optional[dict[str, Any]]:
    """The metrics record of a finished run with this run key in ``run_dir``, else None."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return None
    try:
        data = read_metrics(path)
    except ValueError as e:
        log.warning("%s; the run is recomputed", e)
        return None
    if data.get("run_key_hash") != key_hash:
        log.warning("%s was written by a run with a different config; the run is recomputed", path)
        return None
    return data


def format_summary(record: Mapping[str, Any]) -> str:
    """One line per run: what ran, the metrics, passes, time, items, where."""
    cfg = record.get("config", {})
    metrics = " ".join(f"{k}={_fmt(v)}" for k, v in record.get("metrics", {}).items())
    items = record.get("items", {})
    weights = str(record.get("backbone", {}).get("weights", "")).split(" ")[0]
    return (
        f"[srt-bench] {cfg.get('task', {}).get('name')} | {cfg.get('backbone', {}).get('name')} ({weights}) | "
        f"{record.get('method')} | {metrics} | passes={record.get('passes')} | "
        f"{record.get('wall_time_s', 0):.1f}s | items computed={items.get('computed')} "
        f"cached={items.get('loaded')} | {record.get('run_dir')}"
    )


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# ----------------------------------------------------------------------------------------------
# Loggers (logger=none|csv|wandb)


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
            raise ValueError(f"logger.name={self.name!r} is not valid; expected one of {', '.join(LOGGERS)}")
        if self.name == "csv" and not self.path:
            raise ValueError("logger.path is required for logger=csv (the CSV file rows are appended to)")
        if self.name == "wandb" and self.mode not in ("offline", "online", "disabled"):
            raise ValueError(f"logger.mode={self.mode!r} is not valid; expected offline, online or disabled")
        return self


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside ``path`` (parallel launcher jobs append to the same CSV)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def summary_row(record: Mapping[str, Any]) -> dict[str, Any]:
    cfg = record["config"]
    row = {
        "finished": record.get("finished"),
        "task": cfg["task"].get("name"),
        "dataset": cfg["task"].get("dataset", ""),
        "backbone": cfg["backbone"].get("name"),
        "weights": record.get("backbone", {}).get("weights"),
        "method": record.get("method"),
        "level": cfg["srt"].get("level"),
        "passes": record.get("passes"),
        "wall_time_s": record.get("wall_time_s"),
        "run_dir": record.get("run_dir"),
    }
    row.update(record.get("metrics", {}))
    return row


class CsvLogger:
    """Appends one row per run to a CSV; new metric columns widen the file (rewritten atomically)."""

    def __init__(self, cfg: LoggerConfig):
        self.path = Path(cfg.path)

    def log_run(self, record: Mapping[str, Any], run_dir: Path) -> None:
        import csv

        row = {k: ("" if v is None else v) for k, v in summary_row(record).items()}
        with _locked(self.path):
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

    def log_run(self, record: Mapping[str, Any], run_dir: Path) -> None:
        os.environ.setdefault("WANDB_MODE", self.cfg.mode)
        import wandb

        cfg = record["config"]
        run = wandb.init(
            project=self.cfg.project,
            entity=self.cfg.entity,
            mode=self.cfg.mode,
            dir=str(run_dir),
            name=str(record.get("run_dir", run_dir)),
            group=str(cfg["task"].get("name")),
            tags=list(self.cfg.tags),
            config=cfg,
            reinit="finish_previous",
        )
        try:
            metrics = record.get("metrics", {})
            run.log(dict(metrics))
            run.summary.update({"passes": record.get("passes"), "wall_time_s": record.get("wall_time_s")})
            row = summary_row(record)
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

    def log_run(self, record: Mapping[str, Any], run_dir: Path) -> None:
        pass


LOGGERS: dict[str, type] = {"none": _NoLogger, "csv": CsvLogger, "wandb": WandbLogger}


def make_logger(cfg: LoggerConfig):
    return LOGGERS[cfg.name](cfg)


def host() -> str:
    return socket.gethostname()
