"""Hydra entry point: compose the config, build the backbone, wrap it in SRT, run a task, record the results.

    python run.py task=davis srt.level=3
    python run.py -m task=davis srt.level=0,1,2,3,4,5
    python run.py -m +experiment=table1

Nothing here is task-specific: tasks come from the registry in ``tasks/__init__.py`` and are driven
through the contract in ``tasks/base.py``. Every setting's default lives in a dataclass (srt.SRTConfig,
srt.BackboneConfig, the task's Config, tasks.loggers.LoggerConfig, tasks.runner_config.RunnerConfig),
registered with Hydra's ConfigStore by :func:`register_configs`; every setting is checked (unknown keys, types,
values) once, before any model is built. The run directory is a function of the run's identity
(tasks/run_identity.py), so re-running a command skips finished runs and resumes interrupted ones
(``force=true`` recomputes); the record of a run is eval/run_record.py's ``RunRecord``.

``shard=i/n`` splits a run over processes or machines (README: "Running on a SLURM cluster"): each shard
computes its share of the items into the run's item cache (the assignment: tasks/item_cache.py ``Shard``),
writes ``shards/<i>-of-<n>.json`` and stops before the metrics; the shard that finds every other item cached
when its own are done, or a plain run afterwards, computes the metrics from the cache. The shard is not part
of the run's identity, so all shards and the plain run share one run directory.

Bad input stops a run early with one paragraph (:class:`srt.errors.UserError`, caught in :func:`main`, the one
catching place of this entry point): settings and the model's shape before anything is read, the device, then
the dataset's layout, then (unless the run is already finished) every annotation decoded and every input image
checked (``Task.check_data``), all before any model is built. A run that fails leaves no directory behind unless
it cached items (then re-running resumes it). ``debug=true`` or ``HYDRA_FULL_ERROR=1`` shows the traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import hydra
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

import tasks
from eval.run_record import METRICS_FILE, RunRecord, non_default_settings, passes_used, write_record
from srt.errors import MissingFileError, UserError, debug_requested, is_user_error, paragraph
from srt.io import atomic_write_json
from tasks import environment
from tasks.config_schema import config_node, defaults_of, typed_config, unknown_setting
from tasks.item_cache import Shard, ShardFinished, item_cache_for
from tasks.loggers import LoggerConfig, make_logger
from tasks.run_identity import (
    SRT_RESOURCE_KEYS,
    config_hash,
    finished_record,
    run_key,
    run_subdir_of_config,
    task_key_part,
)
from tasks.runner_config import RunnerConfig

log = logging.getLogger("srt-bench")


RANDOM_WEIGHTS_WARNING = (
    "backbone.pretrained=false: the backbone has RANDOM weights. The numbers only prove that the pipeline "
    "runs; they say nothing about SRT or the paper."
)


@dataclass
class Plan:
    """Everything a run needs, checked, before any model is built."""

    task: Any
    backbone: Any  # srt.BackboneConfig
    srt: Any  # srt.SRTConfig
    logger: LoggerConfig
    runner: RunnerConfig
    run_dir: Path
    shard: Optional[Shard] = None  # runner.shard, parsed
    upsampler: Any = None  # srt.UpsamplerConfig (default: method=srt)


GROUPS = ("paths", "backbone", "srt", "task", "logger", "upsampler")
CONF_DIR = Path(__file__).resolve().parent / "conf"


def group_schemas() -> dict[str, type]:
    """The dataclass of each config group with one schema (``task``'s depends on the task)."""
    import srt

    return {
        "srt": srt.SRTConfig,
        "backbone": srt.BackboneConfig,
        "logger": LoggerConfig,
        "upsampler": srt.UpsamplerConfig,
    }


def register_configs() -> None:
    """Register every setting's default with Hydra's ConfigStore, generated from the dataclasses.

    - ``backbone=<name>``: one entry per name of ``srt.BACKBONES`` (srt.BackboneConfig);
    - ``srt=default``: srt.SRTConfig (conf/srt/ holds the presets baseline and jitter on top of it);
    - ``logger=none``: LoggerConfig (conf/logger/ holds csv and wandb on top of it);
    - ``upsampler=srt``: srt.UpsamplerConfig (conf/upsampler/ holds the other fine-feature methods);
    - ``runner_defaults`` (top-level settings, RunnerConfig) and ``task_<name>_defaults`` (each registered
      task's Config), which conf/config.yaml and conf/task/<name>.yaml include. These are not group
      options, so ``--help`` does not list them.

    Called when this module is imported (tests that compose configs import it first).
    """
    from hydra.core.config_store import ConfigStore

    import srt

    store = ConfigStore.instance()
    store.store(name="runner_defaults", node=config_node(RunnerConfig))
    store.store(group="srt", name="default", node=config_node(srt.SRTConfig))
    store.store(group="logger", name="none", node=config_node(LoggerConfig))
    store.store(group="upsampler", name="srt", node=config_node(srt.UpsamplerConfig))
    for name in srt.BACKBONES:
        store.store(group="backbone", name=name, node=config_node(srt.BackboneConfig, name=name))
    for name in tasks.TASKS:
        try:
            node = {"name": name, **config_node(tasks.task_class(name).Config)}
        except tasks.TaskUnavailableError:
            node = {"name": name}  # still composes; the runner then says why the task cannot be imported
        store.store(name=f"task_{name}_defaults", node=node)


def plan(cfg: DictConfig, run_dir: Optional[Path] = None) -> Plan:
    """Check every setting (once) and build the task; raises ValueError naming the bad setting."""
    import srt

    cfg = job_config(cfg)
    top = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in GROUPS}
    runner = typed_config(RunnerConfig, top, "(top level)").validate()
    backbone = typed_config(srt.BackboneConfig, cfg.backbone, "backbone").validate(group="backbone")
    # the model's depth and width without building it; names a model_kwargs key or value timm refuses
    model = srt.model_info(backbone.name, setting="backbone.model_kwargs", **backbone.model_kwargs)
    srt_cfg = typed_config(srt.SRTConfig, cfg.srt, "srt").validate(
        patch_size=model.patch_size, depth=model.depth, group="srt"
    )
    logger = typed_config(LoggerConfig, cfg.logger, "logger").validate()
    upsampler = upsampler_config(cfg, backbone, model.patch_size, srt_cfg)
    task = tasks.build_task(cfg.task)
    task.check_settings(model, srt_cfg)
    if run_dir is None:
        run_dir = Path(cfg.paths.results_root) / run_subdir_of_config(
            cfg.task, cfg.backbone, cfg.srt, cfg.get("upsampler")
        )
    return Plan(task, backbone, srt_cfg, logger, runner, Path(run_dir), runner.run_shard(), upsampler)


def demo_task_options() -> list[str]:
    """``task=`` options for ``make demo``: every registered task that imports and has a config, as its
    small-input variant ``demo/<task>`` (conf/task/demo/) when there is one."""
    options = []
    for name in tasks.importable_tasks():
        if (CONF_DIR / "task" / "demo" / f"{name}.yaml").is_file():
            options.append(f"demo/{name}")
        elif (CONF_DIR / "task" / f"{name}.yaml").is_file():
            options.append(name)
    return options


def job_config(cfg: DictConfig) -> DictConfig:
    """The job's config without the ``hydra`` node (present when composed with return_hydra_config)."""
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]) if "hydra" in cfg else cfg


def resolve_device(name: str):
    """The torch device ``device=`` names (``auto``: cuda if available, else cpu); UserError naming the setting
    when that device is not on this machine, before any model is built."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = device.index or 0
        if index >= count:
            found = f"{count} CUDA device(s) (cuda:0..cuda:{count - 1})" if count else "no CUDA device"
            raise UserError(
                f"device={name}: this machine has {found}; expected an available device "
                f"(device=cpu, or device=auto to use CUDA when there is one)"
            )
    if device.type == "mps" and not (torch.backends.mps.is_available()):
        raise UserError(
            "device=mps: Apple's Metal backend is not available on this machine (torch.backends.mps.is_available() "
            "is false); expected device=cpu, cuda or auto"
        )
    return device


@contextlib.contextmanager
def _dataset_hint(cfg: DictConfig) -> Iterator[None]:
    """A missing dataset file says where datasets are read from and how to get sample data."""
    try:
        yield
    except MissingFileError as e:
        raise MissingFileError(
            f"{e} (datasets are read under paths.data_root={cfg.paths.data_root}: set SRT_DATA=/path/to/datasets or "
            "paths.data_root=..., or write synthetic sample data with scripts/make_sample_data.py --out data/sample)"
        ) from e


@dataclass
class ShardRecord:
    """What a shard run did (``<run dir>/shards/<i>-of-<n>.json``): no metrics, they need every item."""

    shard: str  # "i/n"
    computed: int  # items of this shard computed by this run
    loaded: int  # items of this shard found in the cache (a resumed shard)
    other_shards_items: int  # the other shards' items this run skipped ...
    other_shards_missing: int  # ... and how many of them were not cached when it finished
    completed_run: bool  # every item was cached: this shard went on to compute the metrics (metrics.json)
    run_dir: str
    run_key_hash: str
    started: str
    finished: str
    wall_time_s: float
    host: Any
    command: list[str]

    def summary_line(self) -> str:
        then = (
            "every item is cached: computing the metrics"
            if self.completed_run
            else f"{self.other_shards_missing} of the other shards' {self.other_shards_items} items not cached yet "
            "(when all shards are done, the same command without shard= computes the metrics)"
        )
        return (
            f"[srt-bench] shard {self.shard} | items computed={self.computed} cached={self.loaded} | {then} | "
            f"{self.wall_time_s:.1f}s | {self.run_dir}"
        )


def shard_record_path(run_dir: Path, shard: Shard) -> Path:
    return Path(run_dir) / "shards" / f"{shard.index}-of-{shard.count}.json"


def execute(cfg: DictConfig, run_dir: Optional[Path] = None) -> RunRecord | ShardRecord:
    """Run one configured job; return its record (also written to ``<run dir>/metrics.json``), or, for a shard
    run that stops before the metrics, its :class:`ShardRecord` (``<run dir>/shards/<i>-of-<n>.json``).

    Order (each step can stop the run with a :class:`srt.errors.UserError`; no model exists before the last):
    settings and the model's shape (:func:`plan`), the device, the dataset's files and their identity, the
    weights (there, and their identity), the finished-run check, the data itself (``Task.check_data``: decodes every annotation),
    then the model and the task's loop."""
    import torch

    import srt
    from tasks.base import RunContext

    cfg = job_config(cfg)
    p = plan(cfg, run_dir)
    device = resolve_device(p.runner.device)
    with _dataset_hint(cfg):
        data = p.task.data_identity()  # the layout (a misplaced dataset fails here) and the files' content hashes
    srt.backbones.check_weights(p.backbone.name, p.backbone.pretrained)  # e.g. offline without them
    # hashes a weights file's content
    key_hash = config_hash(run_key(p.task, cfg.backbone, cfg.srt, data, cfg.get("upsampler")))
    p.run_dir.mkdir(parents=True, exist_ok=True)

    done = None if p.runner.force else finished_record(p.run_dir, key_hash)
    if done is not None:
        log.info("already finished (force=true recomputes): %s", p.run_dir)
        log.info(done.summary_line())
        return done

    with _dataset_hint(cfg):
        p.task.check_data()  # every annotation decoded, every input image checked: before any feature
    if p.backbone.pretrained is False:
        log.warning("!" * 20 + " " + RANDOM_WEIGHTS_WARNING + " " + "!" * 20)
    cache = item_cache_for(
        p.run_dir,
        p.backbone,
        p.srt,
        task_key_part(p.task, p.task.cache_key_config()),
        data,
        upsampler_settings(p),
        shard=p.shard,
    )
    if p.runner.force:
        cache.clear()
    started, t0 = environment.now_iso(), time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    bb = srt.load_backbone(
        p.backbone.name,
        pretrained=p.backbone.pretrained,
        checkpoint_key=p.backbone.checkpoint_key,
        outputs=type(p.task).outputs,
        init_seed=p.backbone.init_seed,
        pos_embed=p.backbone.pos_embed,
        **p.backbone.model_kwargs,
    )
    bb = bb.to(device)
    extractor = build_feature_extractor(bb, p)
    torch.manual_seed(p.runner.seed)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    ctx = RunContext(
        out_dir=p.run_dir, cache=cache, device=device, progress=p.runner.progress, extras={"config": resolved}
    )
    try:
        metrics = p.task.run(extractor, ctx)
    except ShardFinished as done:
        shard_record = _record_shard(p, done, key_hash, started, t0)
        if not shard_record.completed_run:
            return shard_record
        cache.unshard()  # the last shard: every item is cached, so a plain pass computes the metrics
        torch.manual_seed(p.runner.seed)  # as a plain run starts its task (e.g. distill's shuffling)
        metrics = p.task.run(extractor, ctx)
    else:
        if p.shard is not None:  # a task that ignores sharding would have computed metrics from every item
            raise RuntimeError(
                f"task {cfg.task.name!r} finished a shard run without calling ctx.cache.items_done() after its item "
                "loops; its metrics were not written"
            )
    if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) for v in metrics.values()):
        raise TypeError(f"task {cfg.task.name!r} returned {metrics!r}; expected a flat dict of numbers")

    record = RunRecord(
        metrics={k: float(v) for k, v in metrics.items()},
        config=resolved,
        variant=_variant(p),
        data=data,
        run_dir=str(p.run_dir),
        run_key_hash=key_hash,
        overrides=_overrides(),
        backbone={
            "name": bb.name,
            "weights": bb.weights,
            "patch_size": bb.patch_size,
            "embed_dim": bb.embed_dim,
            "depth": bb.depth,
            # a student distilled by SRT says so (eval.run_record labels its runs "distilled")
            "distilled": bool(getattr(bb, "distilled", False)),
            # ... and from which weights (its table row sits beside that teacher's baseline)
            "distilled_from": (getattr(bb, "distilled", None) or {}).get("teacher_weights"),
        },
        srt=dataclasses.asdict(p.srt),
        **upsampler_record(extractor, p),
        passes=int(extractor.passes),
        passes_used=passes_used(extractor),
        items={"computed": cache.computed, "loaded": cache.loaded},
        wall_time_s=round(time.perf_counter() - t0, 3),
        started=started,
        finished=environment.now_iso(),
        memory=peak_memory(extractor),
        device=str(device),
        versions=environment.library_versions(),
        git=environment.git_revision(),
        host=environment.host(),
        command=list(sys.argv),
    )
    write_record(p.run_dir, record)
    make_logger(p.logger).log_run(record, p.run_dir)
    log.info(record.summary_line())
    if p.backbone.pretrained is False:
        log.warning(RANDOM_WEIGHTS_WARNING)
    return record


def _record_shard(p: Plan, done: ShardFinished, key_hash: str, started: str, t0: float) -> ShardRecord:
    """Write (atomically) and log the record of a shard run whose item loops are done."""
    record = ShardRecord(
        shard=str(done.shard),
        computed=done.computed,
        loaded=done.loaded,
        other_shards_items=done.others,
        other_shards_missing=done.others_missing,
        completed_run=done.others_missing == 0,
        run_dir=str(p.run_dir),
        run_key_hash=key_hash,
        started=started,
        finished=environment.now_iso(),
        wall_time_s=round(time.perf_counter() - t0, 3),
        host=environment.host(),
        command=list(sys.argv),
    )
    atomic_write_json(shard_record_path(p.run_dir, done.shard), dataclasses.asdict(record))
    log.info(record.summary_line())
    return record


def _variant(p: Plan) -> dict[str, Any]:
    """Settings that differ from their defaults: they name the run's row in tables (the method, the level,
    the dataset and where the data lies have their own columns or none)."""
    import srt

    backbone_skip = ("name", "pretrained", "model_kwargs", *(() if p.backbone.pretrained is False else ("init_seed",)))
    return {
        **non_default_settings(
            dataclasses.asdict(p.srt), defaults_of(srt.SRTConfig), "srt", skip=("method", "level", *SRT_RESOURCE_KEYS)
        ),
        **non_default_settings(
            dataclasses.asdict(p.task.cfg),
            defaults_of(type(p.task).Config),
            "task",
            skip=("dataset", *p.task.data_location_settings),
        ),
        **non_default_settings(
            dataclasses.asdict(p.backbone), defaults_of(srt.BackboneConfig), "backbone", skip=backbone_skip
        ),
        **{f"backbone.{k}": v for k, v in p.backbone.model_kwargs.items()},
        **upsampler_variant(p),
    }


# ----------------------------------------------------------------------------------------------
# Fine-feature methods (upsampler=..., srt/upsamplers.py): all the runner does for them is here.


def upsampler_config(cfg: DictConfig, backbone: Any, patch_size: int, srt_cfg: Any) -> Any:
    """``upsampler.*`` checked (with the srt.* settings it uses; a learned upsampler's repository located in the
    hub cache), before any model is built; a config without the group is the default (method=srt: srt.*)."""
    import srt
    from srt.config import LEARNED_UPSAMPLERS

    values = cfg.get("upsampler")
    up = typed_config(srt.UpsamplerConfig, values if values is not None else {}, "upsampler")
    up.validate(patch_size=patch_size, group="upsampler", srt=srt_cfg)
    if up.method in LEARNED_UPSAMPLERS:
        srt.upsamplers.locate_hub_upsampler(up.method, backbone.name, up.hub_entry, up.hub_dir)
    return up


def upsampler_settings(p: Plan) -> Optional[dict[str, Any]]:
    return None if p.upsampler is None else dataclasses.asdict(p.upsampler)


def build_feature_extractor(bb: Any, p: Plan) -> Any:
    """The extractor the task gets: the one srt.* describes (upsampler=srt, the default: SRT, the baseline or
    the jitter ensemble), or the fine-feature method upsampler.* selects, which reads its shift and jitter
    settings from srt.* (srt.build_upsampler)."""
    import srt

    if p.upsampler is None or p.upsampler.method == "srt":
        return srt.build_extractor(bb, p.srt, progress=False)
    return srt.build_upsampler(bb, p.upsampler, p.srt)


def upsampler_variant(p: Plan) -> dict[str, Any]:
    """A fine-feature method's settings that differ from the defaults (they name its table rows)."""
    import srt

    if p.upsampler is None or p.upsampler.method == "srt":
        return {}
    return non_default_settings(
        dataclasses.asdict(p.upsampler), defaults_of(srt.UpsamplerConfig), "upsampler", skip=("method", "measure")
    )


def upsampler_record(extractor: Any, p: Plan) -> dict[str, Any]:
    """A fine-feature method's record fields: ``upsampler`` (its settings) and ``cost`` (its cost model at the
    task's image size, with the measured seconds per image and peak memory of the feature calls)."""
    import srt

    if not isinstance(extractor, srt.FineFeatures):
        return {}
    return {"upsampler": dataclasses.asdict(p.upsampler), "cost": extractor.report()}


def peak_memory(extractor: Any) -> dict[str, Any]:
    """environment.peak_memory(); a fine-feature method's memory measurement resets the process's high-water
    mark before each feature call, so the process peak is restated from what it saw before the resets."""
    import srt

    memory = environment.peak_memory()
    if isinstance(extractor, srt.FineFeatures):
        true_peak = srt.upsamplers.process_peak_rss_mib()
        if true_peak is not None:
            memory["process_peak_rss_mib"] = round(max(true_peak, memory.get("process_peak_rss_mib") or 0.0), 1)
    return memory


def _overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # not running under Hydra (tests call execute directly)
        return []


def group_options(group: str) -> list[str]:
    """The options of a config group (``backbone=<option>``): YAML files under conf/<group> (nested ones as
    ``demo/davis``) and the entries :func:`register_configs` put in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.object_type import ObjectType

    folder = CONF_DIR / group
    files = {str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.yaml")} if folder.is_dir() else set()
    store = ConfigStore.instance()
    stored = set()
    if store.get_type(group) == ObjectType.GROUP:
        stored = {
            n.removesuffix(".yaml") for n in store.list(group) if store.get_type(f"{group}/{n}") == ObjectType.CONFIG
        }
    return sorted(files | stored)


def check_override_keys(args: list[str]) -> None:
    """Reject unknown setting names on the command line with the list of valid ones.

    Hydra refuses them too, but its message does not say what the valid settings are. Only plain
    ``group.key=value`` overrides are checked (``+``/``~`` ones and ``hydra.*`` are Hydra's business);
    ``task.*`` keys are checked only when ``task=`` is given on the same command line, since a preset
    may select the task.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    schemas: dict[str, list[type]] = {group: [schema] for group, schema in group_schemas().items()}
    top = [*GROUPS, *(f.name for f in dataclasses.fields(RunnerConfig))]
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if "=" in a and not a.startswith("-")])
    except Exception:  # noqa: BLE001 - malformed overrides: Hydra reports them itself
        return
    for o in overrides:
        if o.key_or_group == "task" and not (o.is_add() or o.is_delete()):
            names = list(o.sweep_string_iterator()) if o.is_sweep_override() else [str(o.value())]
            try:
                schemas["task"] = [tasks.task_class(n).Config for n in names]
            except (ValueError, ImportError):
                pass  # Hydra or the runner reports unknown / unavailable tasks
    for o in overrides:
        key = o.key_or_group
        if o.is_add() or o.is_force_add() or o.is_delete() or o.package or "/" in key or key.startswith("hydra"):
            continue
        head, _, rest = key.partition(".")
        if not rest:
            if head not in top and not (CONF_DIR / head).is_dir():
                raise SystemExit(f"error: {head!r} is not a setting; top-level settings: {', '.join(top)}")
            valid = group_options(head) if head in GROUPS else []
            try:
                chosen = list(o.sweep_string_iterator()) if o.is_sweep_override() else [str(o.value())]
            except Exception:  # noqa: BLE001 - sweeps Hydra expands itself (glob): Hydra checks them
                continue
            unknown = [c for c in chosen if valid and c not in valid]
            if unknown:  # Hydra says so too, over a dozen lines with its search path
                raise SystemExit(f"error: {head}={unknown[0]} is not an option of {head}; options: {', '.join(valid)}")
            continue
        sub = rest.split(".")[0]
        for schema in schemas.get(head, []):
            valid = [f.name for f in dataclasses.fields(schema)]
            if sub not in valid:
                raise SystemExit(f"error: {unknown_setting(head, sub, valid)}")


class RunFailed(CompactHydraException):
    """A job stopped by bad input, raised where the job cannot report it itself (a launcher running jobs in other
    processes): Hydra then prints its message, one paragraph, after its "Error executing job" line."""


#: what a run directory holds before the run computed anything (Hydra's record and log, the cache's key)
_SCAFFOLDING = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "run.log")
#: the process of ``python run.py``: jobs running in it print their own bad-input paragraph (see run_job)
_ENTRY_PID: Optional[int] = None
#: the paragraphs of this process's jobs that stopped on bad input (the exit code is 1 when there are any)
FAILED_JOBS: list[str] = []


def discard_failed_run_dir(run_dir: Path, results_root: Optional[Path] = None) -> bool:
    """Remove the directory of a run that failed before it produced anything, so that it does not look like a
    run: only when it holds no metrics.json and no cached item, and only the files Hydra and the cache wrote
    before any work (then the folders left empty, up to ``results_root``). Returns whether it was removed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or (run_dir / METRICS_FILE).exists() or any(run_dir.glob("cache/*/*.npz")):
        return False
    files = [f for f in run_dir.rglob("*") if f.is_file()]
    known = {run_dir / rel for rel in _SCAFFOLDING}
    if any(f not in known and not (f.name == "key.json" and f.parent.parent == run_dir / "cache") for f in files):
        return False  # something else was written: keep it
    shutil.rmtree(run_dir)
    parent = run_dir.parent
    stop = Path(results_root).resolve() if results_root is not None else None
    while stop is not None and parent.resolve() != stop and stop in parent.resolve().parents:
        try:
            parent.rmdir()  # only if empty
        except OSError:
            break
        parent = parent.parent
    return True


def _is_shard_run(cfg: DictConfig) -> bool:
    try:
        return Shard.parse(OmegaConf.select(cfg, "shard", default=None)) is not None
    except UserError:
        return False


def run_job(cfg: DictConfig, run_dir: Path, report: bool = False) -> Optional[RunRecord | ShardRecord]:
    """:func:`execute` as a Hydra job runs it: the one place run.py catches errors.

    On any error, the run directory is removed if the run produced nothing (:func:`discard_failed_run_dir`),
    except in a shard run (the other shards of the run may be writing into it).
    A user error (:func:`srt.errors.is_user_error`) is then reported as one paragraph, ``error: <message>``:
    with ``report`` (jobs in the process of ``python run.py``: single runs and the basic launcher's sweeps)
    it is printed to stderr here and recorded in :data:`FAILED_JOBS` (the process exits with 1 after the last
    job, and a sweep goes on with its other jobs); otherwise it is raised as :class:`RunFailed`. With
    ``debug=true`` or ``HYDRA_FULL_ERROR=1`` it propagates with its traceback, as every other error (a bug)
    does.
    """
    try:
        return execute(cfg, run_dir)
    except Exception as e:
        results_root = OmegaConf.select(cfg, "paths.results_root", default=None)
        if not _is_shard_run(cfg):  # other shards may be writing into a shard's run directory
            discard_failed_run_dir(run_dir, Path(results_root) if results_root else None)
        debug = OmegaConf.select(cfg, "debug", default=False) is True or debug_requested()
        if not is_user_error(e) or debug:
            raise
        message = f"error: {paragraph(e)}"
        if not report:
            raise RunFailed(message) from e
        # printed here, not raised: Hydra would precede it with "Error executing job with overrides: [...]"
        print(message, file=sys.stderr, flush=True)
        FAILED_JOBS.append(message)
        return None


register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run_job(cfg, Path(HydraConfig.get().runtime.output_dir), report=os.getpid() == _ENTRY_PID)


if __name__ == "__main__":
    _ENTRY_PID = os.getpid()
    check_override_keys(sys.argv[1:])
    main()
    if len(FAILED_JOBS) > 1:
        print(f"error: {len(FAILED_JOBS)} jobs stopped on bad input (each named above)", file=sys.stderr)
    sys.exit(1 if FAILED_JOBS else 0)
