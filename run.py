"""Hydra entry point: compose the config, build the backbone, wrap it in SRT, run a task, record the results.

    python run.py task=davis srt.level=3
    python run.py -m task=davis srt.level=0,1,2,3,4,5
    python run.py -m +experiment=table1

Nothing here is task-specific: tasks come from the registry in ``tasks/__init__.py`` and are driven
through the contract in ``tasks/base.py``. Every setting's default lives in a dataclass (srt.SRTConfig,
srt.BackboneConfig, the task's Config, tasks.loggers.LoggerConfig, RunnerConfig below), registered with
Hydra's ConfigStore by :func:`register_configs`; every setting is checked (unknown keys, types, values)
once, before any model is built. The run directory is a function of the run's identity
(tasks/run_identity.py), so re-running a command skips finished runs and resumes interrupted ones
(``force=true`` recomputes); the record of a run is eval/run_record.py's ``RunRecord``.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import hydra
from omegaconf import DictConfig, OmegaConf

import tasks
from eval.run_record import RunRecord, non_default_settings, write_record
from tasks import environment
from tasks.config_schema import config_node, defaults_of, typed_config, unknown_setting
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

log = logging.getLogger("srt-bench")


RANDOM_WEIGHTS_WARNING = (
    "backbone.pretrained=false: the backbone has RANDOM weights. The numbers only prove that the pipeline "
    "runs; they say nothing about SRT or the paper."
)


@dataclass
class RunnerConfig:
    """Top-level settings besides the config groups."""

    force: bool = False  # recompute even when the run directory holds a finished run
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N | mps
    progress: bool = True  # tqdm bars
    seed: int = 0  # torch's global seed before the task runs

    def validate(self) -> RunnerConfig:
        if not (self.device in ("cpu", "cuda", "mps", "auto") or self.device.startswith("cuda:")):
            raise ValueError(f"device={self.device!r} is not valid; expected cpu, cuda, cuda:N, mps or auto")
        return self


@dataclass
class Plan:
    """Everything a run needs, checked, before any model is built."""

    task: Any
    backbone: Any  # srt.BackboneConfig
    srt: Any  # srt.SRTConfig
    logger: LoggerConfig
    runner: RunnerConfig
    run_dir: Path


GROUPS = ("paths", "backbone", "srt", "task", "logger")
CONF_DIR = Path(__file__).resolve().parent / "conf"


def group_schemas() -> dict[str, type]:
    """The dataclass of each config group with one schema (``task``'s depends on the task)."""
    import srt

    return {"srt": srt.SRTConfig, "backbone": srt.BackboneConfig, "logger": LoggerConfig}


def register_configs() -> None:
    """Register every setting's default with Hydra's ConfigStore, generated from the dataclasses.

    - ``backbone=<name>``: one entry per name of ``srt.BACKBONES`` (srt.BackboneConfig);
    - ``srt=default``: srt.SRTConfig (conf/srt/ holds the presets baseline and jitter on top of it);
    - ``logger=none``: LoggerConfig (conf/logger/ holds csv and wandb on top of it);
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
    patch_size = srt.BACKBONES[backbone.name].patch_size
    srt_cfg = typed_config(srt.SRTConfig, cfg.srt, "srt").validate(patch_size=patch_size, group="srt")
    logger = typed_config(LoggerConfig, cfg.logger, "logger").validate()
    task = tasks.build_task(cfg.task)
    if run_dir is None:
        run_dir = Path(cfg.paths.results_root) / run_subdir_of_config(cfg.task, cfg.backbone, cfg.srt)
    return Plan(task, backbone, srt_cfg, logger, runner, Path(run_dir))


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


def _device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def execute(cfg: DictConfig, run_dir: Optional[Path] = None) -> RunRecord:
    """Run one configured job; return its record (also written to ``<run dir>/metrics.json``)."""
    import torch

    import srt
    from tasks.base import RunContext

    cfg = job_config(cfg)
    p = plan(cfg, run_dir)
    try:
        p.task.check_data()  # a misplaced dataset fails here, before any model is built
        data = p.task.data_identity()
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{e}\n(datasets are read under paths.data_root={cfg.paths.data_root}: set SRT_DATA=/path/to/datasets or "
            "paths.data_root=..., or write synthetic sample data with scripts/make_sample_data.py --out data/sample)"
        ) from e
    key_hash = config_hash(run_key(p.task, cfg.backbone, cfg.srt, data))
    p.run_dir.mkdir(parents=True, exist_ok=True)

    done = None if p.runner.force else finished_record(p.run_dir, key_hash)
    if done is not None:
        log.info("already finished (force=true recomputes): %s", p.run_dir)
        log.info(done.summary_line())
        return done

    if p.backbone.pretrained is False:
        log.warning("!" * 20 + " " + RANDOM_WEIGHTS_WARNING + " " + "!" * 20)
    cache = item_cache_for(p.run_dir, p.backbone, p.srt, task_key_part(p.task, p.task.cache_key_config()), data)
    if p.runner.force:
        cache.clear()
    device = _device(p.runner.device)
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
    extractor = srt.build_extractor(bb, p.srt, progress=False)
    torch.manual_seed(p.runner.seed)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    ctx = RunContext(
        out_dir=p.run_dir, cache=cache, device=device, progress=p.runner.progress, extras={"config": resolved}
    )
    metrics = p.task.run(extractor, ctx)
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
        passes=int(extractor.passes),
        items={"computed": cache.computed, "loaded": cache.loaded},
        wall_time_s=round(time.perf_counter() - t0, 3),
        started=started,
        finished=environment.now_iso(),
        memory=environment.peak_memory(),
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
    }


def _overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # not running under Hydra (tests call execute directly)
        return []


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
            continue
        sub = rest.split(".")[0]
        for schema in schemas.get(head, []):
            valid = [f.name for f in dataclasses.fields(schema)]
            if sub not in valid:
                raise SystemExit(f"error: {unknown_setting(head, sub, valid)}")


register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    execute(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    check_override_keys(sys.argv[1:])
    main()
