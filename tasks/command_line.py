"""The command line's side of the runner: every setting's default registered with Hydra, the options of each
config group, and the check of override names before Hydra composes anything.

The defaults live once, in dataclasses (srt.SRTConfig, srt.BackboneConfig, srt.UpsamplerConfig, each task's
Config, tasks.loggers.LoggerConfig, tasks.runner_config.RunnerConfig); :func:`register_configs` puts them in
Hydra's ConfigStore, which conf/config.yaml and conf/task/<name>.yaml include.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from pathlib import Path

import tasks
from srt.io import atomic_write_json
from srt.io import cache_dir as srt_cache_dir
from tasks.config_schema import config_node, unknown_setting
from tasks.loggers import LoggerConfig
from tasks.runner_config import RunnerConfig

GROUPS = ("paths", "backbone", "srt", "task", "logger", "upsampler")
REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"


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
    for name, node in task_config_nodes().items():
        store.store(name=f"task_{name}_defaults", node=node)


def task_config_nodes() -> dict[str, dict]:
    """Task name -> the ConfigStore node of its Config (``{"name": name}`` for a task that cannot be imported: it
    still composes, and the runner says why).

    Task modules import torch and timm (seconds), which ``--help`` and most settings errors do not need: the
    nodes are generated once per version of the sources and remembered in srt's cache folder
    (:func:`srt.io.cache_dir`) under a digest of every module of srt/, tasks/ and eval/, so a changed default is
    never read stale. The dataclasses stay the one source of the defaults; a cache that cannot be written only
    costs the import next time."""
    path = srt_cache_dir() / "task-config-nodes" / f"{_sources_digest()}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    nodes = {}
    for name in tasks.TASKS:
        try:
            nodes[name] = {"name": name, **config_node(tasks.task_class(name).Config)}
        except tasks.TaskUnavailableError:
            nodes[name] = {"name": name}
    with contextlib.suppress(OSError, TypeError, ValueError):  # read-only home, a default JSON cannot hold
        atomic_write_json(path, nodes)
        for stale in path.parent.glob("*.json"):  # older versions of the sources
            if stale != path:
                stale.unlink(missing_ok=True)
    return nodes


def _sources_digest() -> str:
    digest = hashlib.sha256()
    for package in ("srt", "tasks", "eval"):
        for source in sorted((REPO / package).rglob("*.py")):
            digest.update(str(source.relative_to(REPO)).encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:32]


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

    fields: dict[str, list[list[str]]] = {
        group: [[f.name for f in dataclasses.fields(schema)]] for group, schema in group_schemas().items()
    }
    top = [*GROUPS, *(f.name for f in dataclasses.fields(RunnerConfig))]
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if "=" in a and not a.startswith("-")])
    except Exception:  # noqa: BLE001 - malformed overrides: Hydra reports them itself
        return
    for o in overrides:
        if o.key_or_group == "task" and not (o.is_add() or o.is_delete()):
            names = list(o.sweep_string_iterator()) if o.is_sweep_override() else [str(o.value())]
            nodes = task_config_nodes()
            fields["task"] = [[k for k in nodes[n] if k != "name"] for n in names if len(nodes.get(n, {})) > 1]
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
        for valid in fields.get(head, []):
            if sub not in valid:
                raise SystemExit(f"error: {unknown_setting(head, sub, valid)}")
