"""The task registry: ``task=NAME`` -> a :class:`tasks.base.Task` subclass, imported lazily.

Task modules are imported only when asked for, so a task whose module (or optional dependency) is
missing gives a clear error for that task and never breaks the others. ``build_task`` turns the
``task`` config node into a task instance: the node's ``name`` picks the class, the rest is merged into
the class's ``Config`` dataclass (unknown keys and wrong types are errors naming the key), then
``Config.validate()`` runs if defined, then ``from_config``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any, TypeVar

#: task name -> "module:Class"
TASKS: dict[str, str] = {
    "davis": "tasks.davis:DavisTask",
    "saliency": "tasks.saliency:SaliencyTask",
    "discovery": "tasks.discovery:DiscoveryTask",
    "toy": "tasks.toy:ToyTask",
    "visualize": "tasks.visualize:VisualizeTask",
    "distill": "tasks.distill:DistillTask",
}

T = TypeVar("T")


class TaskUnavailableError(ImportError):
    """A registered task whose module cannot be imported (not written yet, or a dependency is missing)."""


def task_class(name: str) -> type:
    """The class registered as ``name``; ValueError listing valid names, TaskUnavailableError if not importable."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
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


def typed_config(schema: type[T], values: Any, prefix: str) -> T:
    """Merge ``values`` (a mapping or DictConfig) into the dataclass ``schema``; return the validated instance.

    Errors are ValueErrors naming ``<prefix>.<key>``: unknown keys list the valid keys, wrong types
    name the expected type; then ``schema.validate()`` (if any) checks the values.
    """
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    if isinstance(values, DictConfig):
        values = OmegaConf.to_container(values, resolve=True)
    if not isinstance(values, Mapping):
        raise ValueError(f"{prefix}: expected a mapping of settings, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise ValueError(
            f"{prefix}.{unknown[0]} is not a valid setting; valid settings of {prefix}: {', '.join(fields)}"
        )
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), values)
        obj = OmegaConf.to_object(merged)
    except ConfigKeyError as e:  # pragma: no cover - unknown keys are caught above
        raise ValueError(f"{prefix}: {e.msg}; valid settings: {', '.join(fields)}") from e
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None) or "?"
        key = str(key).split(".")[0]
        f = fields.get(key)
        expected = getattr(f.type, "__name__", str(f.type)) if f is not None else "?"
        raise ValueError(f"{prefix}.{key}={values.get(key)!r} has the wrong type; expected {expected}") from e
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def build_task(task_cfg: Any):
    """A task instance from the ``task`` config node (``name`` + the fields of the task's Config)."""
    from omegaconf import DictConfig, OmegaConf

    values = OmegaConf.to_container(task_cfg, resolve=True) if isinstance(task_cfg, DictConfig) else dict(task_cfg)
    if "name" not in values:
        raise ValueError(f"the task config has no 'name'; expected one of {', '.join(sorted(TASKS))}")
    name = values.pop("name")
    cls = task_class(name)
    cfg = typed_config(cls.Config, values, "task")
    return cls.from_config(cfg)
