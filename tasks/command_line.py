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
from typing import Any

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


_KEEP_VERSIONS = 16


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
        # keep the newest few (several checkouts may share the cache folder), drop older versions of the sources
        for stale in sorted(path.parent.glob("*.json"), key=lambda f: f.stat().st_mtime)[:-_KEEP_VERSIONS]:
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
    """Reject unknown setting names on the command line with the list of valid ones, and overrides Hydra's
    grammar cannot read with a hint.

    Hydra refuses them too, but its message does not say what the valid settings are. Only plain
    ``group.key=value`` overrides are checked (``+``/``~`` ones and ``hydra.*`` are Hydra's business);
    ``task.*`` keys against the task the command selects: ``task=``, else the preset's (``+experiment=``), else
    conf/config.yaml's default.
    """
    overrides = _parse_overrides([a for a in args if "=" in a and not a.startswith("-")])
    fields: dict[str, list[list[str]]] = {
        group: [[f.name for f in dataclasses.fields(schema)]] for group, schema in group_schemas().items()
    }
    nodes = task_config_nodes()
    fields["task"] = [
        [k for k in nodes[n] if k != "name"] for n in _selected_tasks(overrides) if len(nodes.get(n, {})) > 1
    ]
    top = [*GROUPS, *(f.name for f in dataclasses.fields(RunnerConfig))]
    for o in overrides:
        key = o.key_or_group
        if o.is_add() or o.is_force_add() or o.is_delete() or o.package or "/" in key or key.startswith("hydra"):
            continue
        head, _, rest = key.partition(".")
        if not rest:
            _check_group_choice(o, head, top)
            continue
        sub = rest.split(".")[0]
        for valid in fields.get(head, []):
            if sub not in valid:
                raise SystemExit(f"error: {unknown_setting(head, sub, valid)}")


def _parse_overrides(args: list[str]) -> list:
    """Hydra's parse of the overrides; an override its grammar refuses (a path with spaces, brackets or
    parentheses) exits with a hint to quote it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for arg in args:
        try:
            parser.parse_overrides([arg])
        except Exception as e:  # noqa: BLE001 - Hydra's grammar errors have no common public type
            key, _, value = arg.partition("=")
            raise SystemExit(
                f"error: the override {arg!r} cannot be read by Hydra's override grammar ({str(e).splitlines()[0]}). "
                f"Characters such as spaces, ()[]{{}}, commas, quotes and ':' must be quoted for Hydra: write "
                f"{key}='\"{value}\"' (the single quotes are for the shell); for a data folder, SRT_DATA={value} "
                "in the environment avoids the grammar altogether"
            ) from None
    return parser.parse_overrides(args)


def _selected_tasks(overrides: list) -> list[str]:
    """The task(s) a command runs: ``task=`` (a sweep: each), else the one ``+experiment=`` selects, else the
    default of conf/config.yaml."""
    for o in overrides:
        if o.key_or_group == "task" and not (o.is_add() or o.is_delete()):
            return _values(o)
    for o in overrides:
        if o.key_or_group == "experiment":
            return [
                t for n in _values(o) for t in _task_of_yaml(CONF_DIR / "experiment" / f"{n}.yaml", "override /task")
            ]
    return _task_of_yaml(CONF_DIR / "config.yaml", "task")


def _task_of_yaml(path: Path, entry: str) -> list[str]:
    """The task a config file's defaults list selects (``- task: davis`` / ``- override /task: davis``)."""
    from omegaconf import OmegaConf

    try:
        defaults = OmegaConf.to_container(OmegaConf.load(path)).get("defaults", [])
    except (OSError, ValueError, AttributeError):
        return []  # Hydra reports a missing or broken file itself
    return [str(d[entry]).removeprefix("demo/") for d in defaults if isinstance(d, dict) and entry in d]


def _check_group_choice(o: Any, head: str, top: list[str]) -> None:
    """``group=option`` and top-level ``key=value``: the group or key exists, the option is one of the group's."""
    if head not in top and not (CONF_DIR / head).is_dir():
        raise SystemExit(f"error: {head!r} is not a setting; top-level settings: {', '.join(top)}")
    valid = group_options(head) if head in GROUPS else []
    try:
        chosen = _values(o)
    except Exception:  # noqa: BLE001 - sweeps Hydra expands itself (glob): Hydra checks them
        return
    unknown = [c for c in chosen if valid and c not in valid]
    if unknown:  # Hydra says so too, over a dozen lines with its search path
        raise SystemExit(f"error: {head}={unknown[0]} is not an option of {head}; options: {', '.join(valid)}")


def check_results_root(args: list[str]) -> None:
    """The results folder a command writes to can be made and written, before Hydra creates the run directory
    (Hydra would stop with a traceback): one paragraph naming the setting and the path otherwise. The folder is
    ``paths.results_root=`` on the command line, else the preset's, else conf/paths/default.yaml's."""
    import os

    overrides = _parse_overrides([a for a in args if "=" in a and not a.startswith("-")])
    roots = [v for o in overrides if o.key_or_group == "paths.results_root" for v in _values(o)]
    for o in overrides:
        if not roots and o.key_or_group == "experiment":
            roots = [r for n in _values(o) for r in _yaml_values(CONF_DIR / "experiment" / f"{n}.yaml", "paths")]
    for root in roots or _yaml_values(CONF_DIR / "paths" / "default.yaml", None):
        folder = Path(root).expanduser().absolute()
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        problem = None
        if not existing.is_dir():
            problem = f"{existing} is a file, not a folder"
        elif os.statvfs(existing).f_flag & os.ST_RDONLY:
            problem = f"{existing} is on a read-only file system"
        elif not os.access(existing, os.W_OK | os.X_OK):
            problem = f"{existing} is not writable by this user"
        if problem:
            raise SystemExit(
                f"error: paths.results_root={root}: {problem}, so the results cannot be written there; expected a "
                "folder that can be created and written (set paths.results_root=DIR)"
            )


def _values(o: Any) -> list[str]:
    return list(o.sweep_string_iterator()) if o.is_sweep_override() else [str(o.value())]


def _yaml_values(path: Path, package: str | None) -> list[str]:
    """``results_root`` of a config file (under ``package`` when given), if it sets one as plain text."""
    from omegaconf import OmegaConf

    try:
        node = OmegaConf.to_container(OmegaConf.load(path))
    except (OSError, ValueError):
        return []
    node = node.get(package, {}) if package else node
    value = node.get("results_root") if isinstance(node, dict) else None
    return [value] if isinstance(value, str) and "${" not in value else []
