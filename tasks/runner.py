"""The run pipeline behind ``python run.py``: plan, check, execute, record.

Nothing here is task-specific: tasks come from the registry in ``tasks/__init__.py`` and are driven through the
contract in ``tasks/base.py``. Every setting is checked (unknown keys, types, values) once, before any model is
built (:func:`plan`). The run directory is a function of the run's identity (tasks/run_identity.py), so
re-running a command skips finished runs and resumes interrupted ones (``force=true`` recomputes); the record
of a run is eval/run_record.py's ``RunRecord``.

``shard=i/n`` splits a run over processes or machines (docs/cluster.md): each shard computes its share of the
items into the run's item cache (tasks/shard.py), writes ``shards/<i>-of-<n>.json`` and stops before the
metrics; the shard that finds every other item cached when its own are done, or a plain run afterwards,
computes the metrics from the cache. The shard is not part of the run's identity, so all shards and the plain
run share one run directory.

Bad input stops a run early with one paragraph (:class:`srt.errors.UserError`, caught in :func:`run_job`, the
one catching place): settings and the model's shape before anything is read, the device, then the dataset's
layout, then (unless the run is already finished) every annotation decoded and every input image checked
(``Task.check_data``), all before any model is built. A run that fails leaves no directory behind unless it
cached items (then re-running resumes it). ``debug=true`` or ``HYDRA_FULL_ERROR=1`` shows the traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

import tasks
from eval.run_record import METRICS_FILE, RunRecord, non_default_settings, passes_used, write_record
from srt.errors import MissingFileError, UserError, debug_requested, is_user_error, paragraph
from srt.io import atomic_write_json, exclusive_run_lock
from tasks import environment, memory
from tasks.command_line import GROUPS
from tasks.config_schema import defaults_of, typed_config
from tasks.item_cache import item_cache_for
from tasks.loggers import LoggerConfig, make_logger
from tasks.run_identity import (
    SRT_RESOURCE_KEYS,
    config_hash,
    finished_record,
    run_key,
    run_subdir_of_config,
    task_key_part,
)
from tasks.runner_config import RunnerConfig, check_model_free_settings
from tasks.shard import Shard, ShardFinished

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
    model: Any = None  # srt.ModelInfo: the backbone's depth, width and patch size, known without building it


def plan(cfg: DictConfig, run_dir: Optional[Path] = None) -> Plan:
    """Check every setting (once) and build the task; raises ValueError naming the bad setting."""
    import srt

    cfg = job_config(cfg)
    top = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in GROUPS}
    runner = typed_config(RunnerConfig, top, "(top level)").validate()
    logger = typed_config(LoggerConfig, cfg.logger, "logger").validate()
    backbone, srt_cfg, _ = check_model_free_settings(cfg.backbone, cfg.srt, cfg.get("upsampler"))
    # the model's depth and width without building it; names a model_kwargs key or value timm refuses
    model = srt.model_info(backbone.name, setting="backbone.model_kwargs", **backbone.model_kwargs)
    srt_cfg.validate(patch_size=model.patch_size, depth=model.depth, group="srt")
    upsampler = upsampler_config(cfg, backbone, model.patch_size, srt_cfg)
    task = tasks.build_task(cfg.task)
    task.check_settings(model, srt_cfg)
    if run_dir is None:
        run_dir = Path(cfg.paths.results_root) / run_subdir_of_config(
            cfg.task, cfg.backbone, cfg.srt, cfg.get("upsampler")
        )
    return Plan(task, backbone, srt_cfg, logger, runner, Path(run_dir), runner.run_shard(), upsampler, model)


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
    weights (there, and their identity), the finished-run check, the data itself (``Task.check_data``: decodes
    every annotation), then the model and the task's loop."""
    cfg = job_config(cfg)
    p = plan(cfg, run_dir)
    job = _identify(cfg, p)
    with exclusive_run_lock(_run_lock_path(p), lambda holder: _say_waiting(p, holder)):
        done = None if p.runner.force else finished_record(p.run_dir, job.key_hash)
        if done is not None:
            log.info("already finished (force=true recomputes): %s", p.run_dir)
            log.info(done.summary_line())
            return done
        with _dataset_hint(cfg):
            p.task.check_data()  # every annotation decoded, every input image checked: before any feature
        _check_memory(p, job)
        if not p.runner.force:  # what an earlier run left to resume from (a checkpoint), read before any model
            p.task.check_run_dir(p.run_dir)
        if p.backbone.pretrained is False:
            log.warning("!" * 20 + " " + RANDOM_WEIGHTS_WARNING + " " + "!" * 20)
        return _compute(cfg, p, job)


def _check_memory(p: Plan, job: _Job) -> None:
    """The peak memory the settings need, estimated before any model is built (tasks/memory.py)."""
    largest = p.task.largest_input(p.model)
    if largest is None:
        return
    h, w, dense_stride = largest
    est = memory.estimate(p.model, p.srt, p.upsampler, (h, w), dense_stride)
    memory.check_memory(est, job.device, f"task={p.task.name} at {w}x{h}", enabled=p.runner.check_memory)


def _run_lock_path(p: Plan) -> Path:
    """One lock per run, or per shard (the shards of a run share its directory and run at once by design)."""
    name = "run.lock" if p.shard is None else f"run.shard-{p.shard.index}-of-{p.shard.count}.lock"
    return p.run_dir / name


def _say_waiting(p: Plan, holder: str) -> None:
    log.warning(
        "%s is being computed by %s (the same run, started earlier): waiting for it to finish, then its results "
        "are used (Ctrl-C stops waiting; nothing of the other run is touched)",
        p.run_dir,
        holder,
    )


@dataclass
class _Job:
    """What identifies a checked run: its device, its data's identity and the hash of its run key."""

    device: Any  # torch.device
    data: dict[str, Any]
    key_hash: str
    started: str = ""
    t0: float = 0.0


def _identify(cfg: DictConfig, p: Plan) -> _Job:
    """The device, the dataset's layout and content hashes, the weights (there, and their identity): the run's
    key, and its directory made."""
    import srt

    device = resolve_device(p.runner.device)
    with _dataset_hint(cfg):
        data = p.task.data_identity()  # the layout (a misplaced dataset fails here) and the files' content hashes
    srt.backbones.check_weights(p.backbone.name, p.backbone.pretrained)  # e.g. offline without them
    key_hash = config_hash(run_key(p.task, cfg.backbone, cfg.srt, data, cfg.get("upsampler")))  # hashes weights
    p.run_dir.mkdir(parents=True, exist_ok=True)
    return _Job(device, data, key_hash)


def _compute(cfg: DictConfig, p: Plan, job: _Job) -> RunRecord | ShardRecord:
    """Build the model and the extractor, run the task's loop (resuming from the item cache), record it."""
    import torch

    from tasks.base import RunContext

    cache = item_cache_for(
        p.run_dir,
        p.backbone,
        p.srt,
        task_key_part(p.task, p.task.cache_key_config()),
        job.data,
        upsampler_settings(p),
        shard=p.shard,
    )
    if p.runner.force:
        cache.clear()
    elif len(cache):
        log.info(
            "resuming: %d items of an earlier, interrupted run are cached in %s (loaded, not recomputed)",
            len(cache),
            cache.root,
        )
    job.started, job.t0 = environment.now_iso(), time.perf_counter()
    if job.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(job.device)
    bb = load_configured_backbone(p).to(job.device)
    extractor = build_feature_extractor(bb, p)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    ctx = RunContext(
        out_dir=p.run_dir, cache=cache, device=job.device, progress=p.runner.progress, extras={"config": resolved}
    )
    metrics = _run_task(p, extractor, ctx, job)
    if isinstance(metrics, ShardRecord):
        return metrics
    record = _run_record(p, job, metrics, resolved, bb, extractor, cache)
    write_record(p.run_dir, record)
    make_logger(p.logger).log_run(record, p.run_dir)
    log.info(record.summary_line())
    if p.backbone.pretrained is False:
        log.warning(RANDOM_WEIGHTS_WARNING)
    return record


def load_configured_backbone(p: Plan) -> Any:
    """The frozen backbone ``backbone.*`` describes, with the outputs the task asks for."""
    import srt

    return srt.load_backbone(
        p.backbone.name,
        pretrained=p.backbone.pretrained,
        checkpoint_key=p.backbone.checkpoint_key,
        outputs=type(p.task).outputs,
        init_seed=p.backbone.init_seed,
        pos_embed=p.backbone.pos_embed,
        **p.backbone.model_kwargs,
    )


def _run_task(p: Plan, extractor: Any, ctx: Any, job: _Job) -> dict[str, float] | ShardRecord:
    """The task's metrics; for a shard run, its :class:`ShardRecord`, or, when this shard found every item
    cached, the metrics of the plain pass that follows it."""
    import torch

    torch.manual_seed(p.runner.seed)
    try:
        metrics = p.task.run(extractor, ctx)
    except ShardFinished as done:
        shard_record = _record_shard(p, done, job.key_hash, job.started, job.t0)
        if not shard_record.completed_run:
            return shard_record
        ctx.cache.unshard()  # the last shard: every item is cached, so a plain pass computes the metrics
        torch.manual_seed(p.runner.seed)  # as a plain run starts its task (e.g. distill's shuffling)
        metrics = p.task.run(extractor, ctx)
    else:
        if p.shard is not None:  # a task that ignores sharding would have computed metrics from every item
            raise RuntimeError(
                f"task {p.task.name!r} finished a shard run without calling ctx.cache.items_done() after its item "
                "loops; its metrics were not written"
            )
    if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) for v in metrics.values()):
        raise TypeError(f"task {p.task.name!r} returned {metrics!r}; expected a flat dict of numbers")
    return {k: float(v) for k, v in metrics.items()}


def _run_record(p: Plan, job: _Job, metrics: dict, resolved: dict, bb: Any, extractor: Any, cache: Any) -> RunRecord:
    distilled = getattr(bb, "distilled", None)
    return RunRecord(
        metrics=metrics,
        config=resolved,
        variant=_variant(p),
        data=job.data,
        run_dir=str(p.run_dir),
        run_key_hash=job.key_hash,
        overrides=_overrides(),
        backbone={
            "name": bb.name,
            "weights": bb.weights,
            "patch_size": bb.patch_size,
            "embed_dim": bb.embed_dim,
            "depth": bb.depth,
            # a student distilled by SRT says so (eval.run_record labels its runs "distilled") ...
            "distilled": bool(distilled),
            # ... and from which weights (its table row sits beside that teacher's baseline)
            "distilled_from": (distilled or {}).get("teacher_weights"),
        },
        srt=dataclasses.asdict(p.srt),
        **upsampler_record(extractor, p),
        passes=int(extractor.passes),
        passes_used=passes_used(extractor),
        items={"computed": cache.computed, "loaded": cache.loaded},
        wall_time_s=round(time.perf_counter() - job.t0, 3),
        started=job.started,
        finished=environment.now_iso(),
        memory=peak_memory(extractor),
        device=str(job.device),
        versions=environment.library_versions(),
        git=environment.git_revision(),
        host=environment.host(),
        command=list(sys.argv),
        extra=p.task.record_notes(),  # e.g. the images a task excluded, by id
    )


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
# Fine-feature methods (upsampler=..., srt/upsamplers/): all the runner does for them is here.


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


class RunFailed(CompactHydraException):
    """A job stopped by bad input, raised where the job cannot report it itself (a launcher running jobs in other
    processes): Hydra then prints its message, one paragraph, after its "Error executing job" line."""


#: what a run directory holds before the run computed anything (Hydra's record and log, the cache's key)
_SCAFFOLDING = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "run.log", "run.lock")
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
