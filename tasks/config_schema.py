"""Settings as dataclasses: the one place each setting's default and type live, for the Hydra runner too.

- :func:`config_node` turns a dataclass into the node run.py registers in Hydra's ConfigStore (its field
  defaults, plus a few values such as a backbone's name), so no YAML file repeats a default and a field
  added to a dataclass is a setting at once.
- :func:`typed_config` turns the composed values back into the dataclass: unknown keys and wrong types are
  ValueErrors naming ``<group>.<key>``. The values themselves are checked by the dataclass's ``validate()``,
  which the caller runs once (run.py ``plan``, :func:`tasks.build_task`).

The nodes hold plain values, not typed structured configs: Hydra would check types while composing, with
its own messages and before the run directory can be resolved; here the check runs once, in
:func:`typed_config`, and names the setting as the command line spells it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from srt.errors import UserError

T = TypeVar("T")

MISSING = "???"  # OmegaConf's "must be set" marker, for fields without a default


def defaults_of(schema: type) -> dict[str, Any]:
    """Field name -> default value of a dataclass (fields without a default are left out)."""
    out = {}
    for f in dataclasses.fields(schema):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def config_node(schema: type, **values: Any) -> dict[str, Any]:
    """The ConfigStore node of a dataclass: every field with its default (``???`` if it has none), then ``values``.

    An empty-dict default is stored as null: Hydra lets the command line assign a dict to a null key
    (``backbone.model_kwargs={depth:2}``) but not add keys to an empty one; :func:`typed_config` reads null
    back as the empty dict."""
    defaults = defaults_of(schema)
    node = {f.name: defaults.get(f.name, MISSING) for f in dataclasses.fields(schema)}
    node = {k: (None if isinstance(v, dict) and not v else v) for k, v in node.items()}
    return {**node, **values}


def unknown_setting(group: str, key: str, valid: Iterable[str]) -> str:
    """The message for a setting name that is not a field of its group's dataclass."""
    return f"{group}.{key} is not a valid setting; valid settings of {group}: {', '.join(valid)}"


def typed_config(schema: type[T], values: Any, group: str) -> T:
    """Merge ``values`` (a mapping or DictConfig) into the dataclass ``schema``; not validated (call
    ``validate()`` on the result).

    Errors are ValueErrors naming ``<group>.<key>``: unknown keys list the valid keys, wrong types name the
    expected type.
    """
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(values, DictConfig):
        values = OmegaConf.to_container(values, resolve=True)
    if not isinstance(values, Mapping):
        raise UserError(f"{group}: expected a mapping of settings, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise UserError(unknown_setting(group, unknown[0], fields))
    empty_dicts = {k for k, v in defaults_of(schema).items() if isinstance(v, dict) and not v}
    values = {k: ({} if v is None and k in empty_dicts else v) for k, v in values.items()}
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), values))
    except OmegaConfBaseException as e:
        key = str(getattr(e, "full_key", None) or getattr(e, "key", None) or "?").split(".")[0]
        f = fields.get(key)
        expected = getattr(f.type, "__name__", str(f.type)) if f is not None else "?"
        raise UserError(f"{group}.{key}={values.get(key)!r} has the wrong type; expected {expected}") from e
