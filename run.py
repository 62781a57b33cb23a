"""Hydra entry point: compose the config, build the backbone, wrap it in SRT, run a task, record the results.

    python run.py task=davis srt.level=3
    python run.py -m task=davis srt.level=0,1,2,3,4,5
    python run.py -m +experiment=table1

Nothing here is task-specific: tasks come from the registry in ``tasks/__init__.py`` and are driven
through the contract in ``tasks/base.py``; results go through ``tasks/results.py``. Every setting is
checked (unknown keys, types, values) before any model is built. The run directory is a function of the
config, so re-running a command skips finished runs and resumes interrupted ones (``force=true``
recomputes).
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
from tasks import results

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
    logger: results.LoggerConfig
    runner: RunnerConfig
    run_dir: Path


GROUPS = ("paths", "backbone", "srt", "task", "logger")
CONF_DIR = Path(__file__).resolve().parent / "conf"


def plan(cfg: DictConfig, run_dir: Optional[Path] = None) -> Plan:
    """Check every setting and build the task; raises ValueError naming the bad setting."""
    import srt

    cfg = job_config(cfg)
    top = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in GROUPS}
    runner = tasks.typed_config(RunnerConfig, top, "(top level)")
    backbone_values = OmegaConf.to_container(cfg.backbone, resolve=True)
    if backbone_values.get("model_kwargs", {}) is None:
        # null in conf/backbone/*.yaml: Hydra lets the command line assign a dict to a null key, but
        # not add keys to an empty one (backbone.model_kwargs={depth:2} would fail on {})
        backbone_values["model_kwargs"] = {}
    backbone = tasks.typed_config(srt.BackboneConfig, backbone_values, "backbone")
    srt_cfg = tasks.typed_config(srt.SRTConfig, cfg.srt, "srt")
    srt_cfg.validate(patch_size=srt.BACKBONES[backbone.name].patch_size)
    logger = tasks.typed_config(results.LoggerConfig, cfg.logger, "logger")
    task = tasks.build_task(cfg.task)
    if run_dir is None:
        run_dir = Path(cfg.paths.results_root) / results.run_subdir(cfg.task, cfg.backbone, cfg.srt)
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


def method_label(srt_cfg: Any, distilled: bool = False) -> str:
    if distilled:  # weights of a self-distillation run (task=distill), at any level
        return "distilled"
    if srt_cfg.method == "jitter":
        return "naive ensemble"
    return "baseline" if srt_cfg.level == 0 else "+SRT"


def _device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def execute(cfg: DictConfig, run_dir: Optional[Path] = None) -> dict[str, Any]:
    """Run one configured job; return its metrics.json record."""
    import torch

    import srt
    from tasks.base import RunContext

    cfg = job_config(cfg)
    p = plan(cfg, run_dir)
    key = results.run_key(cfg.task, cfg.backbone, cfg.srt)
    key_hash = results.config_hash(key)
    p.run_dir.mkdir(parents=True, exist_ok=True)

    done = None if p.runner.force else results.finished_run(p.run_dir, key_hash)
    if done is not None:
        log.info("already finished (force=true recomputes): %s", p.run_dir / results.METRICS_FILE)
        log.info(results.format_summary(done))
        return done

    try:
        p.task.check_data()  # a misplaced dataset fails here, before any model is built
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{e}\n(datasets are read under paths.data_root={cfg.paths.data_root}: set SRT_DATA=/path/to/datasets or "
            "paths.data_root=..., or write synthetic sample data with scripts/make_sample_data.py --out data/sample)"
        ) from e
    if p.backbone.pretrained is False:
        log.warning("!" * 20 + " " + RANDOM_WEIGHTS_WARNING + " " + "!" * 20)
    cache = results.item_cache_for(p.run_dir, p.backbone, p.srt, p.task.cache_key_config())
    if p.runner.force:
        cache.clear()
    device = _device(p.runner.device)
    started, t0 = results.now_iso(), time.perf_counter()
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

    task_cfg = dataclasses.asdict(p.task.cfg) if dataclasses.is_dataclass(p.task.cfg) else dict(p.task.cfg)
    raw_task = OmegaConf.to_container(cfg.task, resolve=False)
    # settings that differ from the defaults name the variant in tables; paths (interpolated from
    # ${paths...}) are where the data is, not what was computed
    path_keys = tuple(k for k, v in raw_task.items() if isinstance(v, str) and "${" in v)
    variant = {
        **results.config_variant(
            dataclasses.asdict(p.srt),
            _defaults(srt.SRTConfig),
            "srt",
            skip=("method", "level", *results.SRT_RESOURCE_KEYS),
        ),
        **results.config_variant(task_cfg, _defaults(type(p.task).Config), "task", skip=("dataset", *path_keys)),
        **{f"backbone.{k}": v for k, v in p.backbone.model_kwargs.items()},
    }
    if p.backbone.checkpoint_key is not None:
        variant["backbone.checkpoint_key"] = p.backbone.checkpoint_key
    if p.backbone.pos_embed != srt.BackboneConfig.pos_embed:
        variant["backbone.pos_embed"] = p.backbone.pos_embed
    record = {
        "metrics": {k: float(v) for k, v in metrics.items()},
        "method": method_label(p.srt, distilled=bb.distilled is not None),
        "variant": variant,
        "run_dir": str(p.run_dir),
        "run_key_hash": key_hash,
        "config": resolved,
        "overrides": _overrides(),
        "backbone": {
            "name": bb.name,
            "weights": bb.weights,
            "patch_size": bb.patch_size,
            "embed_dim": bb.embed_dim,
            "depth": bb.depth,
            "distilled": bb.distilled,  # the training record of a distilled student (task=distill), else null
        },
        "srt": dataclasses.asdict(p.srt),
        "passes": int(extractor.passes),
        "items": {"computed": cache.computed, "loaded": cache.loaded},
        "wall_time_s": round(time.perf_counter() - t0, 3),
        "started": started,
        "finished": results.now_iso(),
        "memory": results.peak_memory(),
        "device": str(device),
        "versions": results.library_versions(),
        "git": results.git_revision(),
        "host": results.host(),
        "command": sys.argv,
    }
    results.write_metrics(p.run_dir, record)
    results.make_logger(p.logger).log_run(record, p.run_dir)
    log.info(results.format_summary(record))
    if p.backbone.pretrained is False:
        log.warning(RANDOM_WEIGHTS_WARNING)
    return record


def _defaults(schema: type) -> dict[str, Any]:
    """Default values of a dataclass's fields (fields without a default are left out)."""
    out = {}
    for f in dataclasses.fields(schema):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


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

    import srt

    schemas: dict[str, list[type]] = {
        "srt": [srt.SRTConfig],
        "backbone": [srt.BackboneConfig],
        "logger": [results.LoggerConfig],
    }
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
                raise SystemExit(
                    f"error: {head}.{sub} is not a valid setting; valid settings of {head}: {', '.join(valid)}"
                )


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    execute(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    check_override_keys(sys.argv[1:])
    main()
