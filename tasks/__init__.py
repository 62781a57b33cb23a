"""The task registry: ``task=NAME`` -> a :class:`tasks.base.Task` subclass, imported lazily.

Task modules are imported only when asked for, so a task whose module (or optional dependency) is
missing gives a clear error for that task and never breaks the others. ``build_task`` turns the
``task`` config node into a task instance: the node's ``name`` picks the class, the rest is merged into
the class's ``Config`` dataclass (:func:`tasks.config_schema.typed_config`: unknown keys and wrong types are
errors naming the key), then ``Config.validate()`` runs if defined, then ``from_config``.
"""

from __future__ import annotations

import importlib
from typing import Any

from srt.errors import UserError

#: task name -> "module:Class"
TASKS: dict[str, str] = {
    "davis": "tasks.davis:DavisTask",
    "saliency": "tasks.saliency:SaliencyTask",
    "discovery": "tasks.discovery:DiscoveryTask",
    "retrieval": "tasks.retrieval:RetrievalTask",
    "toy": "tasks.toy:ToyTask",
    "depth": "tasks.depth:DepthTask",
    "visualize": "tasks.visualize:VisualizeTask",
    "distill": "tasks.distill:DistillTask",
    "fidelity": "tasks.fidelity:FidelityTask",
}


class TaskUnavailableError(UserError, ImportError):
    """A registered task whose module cannot be imported (not written yet, or a dependency is missing)."""


def task_class(name: str) -> type:
    """The class registered as ``name``; ValueError listing valid names, TaskUnavailableError if not importable."""
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    module_name, class_name = TASKS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            raise TaskUnavailableError(
                f"task {name!r} is registered ({TASKS[name]}) but its module {module_name} does not exist yet; "
                f"importable tasks: {', '.join(importable_tasks()) or 'none'}"
            ) from e
        raise TaskUnavailableError(f"task {name!r} ({TASKS[name]}) cannot be imported: {e}") from e
    cls = getattr(module, class_name, None)
    if cls is None:
        raise TaskUnavailableError(f"task {name!r}: module {module_name} has no class {class_name}")
    return cls


def importable_tasks() -> list[str]:
    """Registered tasks whose module imports (what ``make demo`` runs)."""
    out = []
    for name in sorted(TASKS):
        module_name = TASKS[name].split(":")[0]
        try:
            importlib.import_module(module_name)
        except ImportError:
            continue
        out.append(name)
    return out


def build_task(task_cfg: Any, validate: bool = True):
    """A task instance from the ``task`` config node (``name`` + the fields of the task's Config).

    ``validate=False`` skips ``Config.validate()`` (the run directory's name is computed before the runner
    checks the settings, which it does once)."""
    from omegaconf import DictConfig, OmegaConf

    from .config_schema import typed_config

    values = OmegaConf.to_container(task_cfg, resolve=True) if isinstance(task_cfg, DictConfig) else dict(task_cfg)
    if "name" not in values:
        raise UserError(f"the task config has no 'name'; expected one of {', '.join(sorted(TASKS))}")
    name = values.pop("name")
    cls = task_class(name)
    cfg = typed_config(cls.Config, values, "task")
    if validate and callable(getattr(cfg, "validate", None)):
        cfg.validate()
    return cls.from_config(cfg)
