"""How a run-config key is declared: once, as a typed dataclass field with its help and roles.

Every key of ``[tool.flwr.app.config]`` is a field of one section dataclass (``model``,
``prompt``, ..., ``client``) declared with :func:`key`. Its metadata says, once, what other code
used to list by hand:

* ``help``: the README's configuration reference is generated from it (tests compare them);
* ``resumable``: may change between an interrupted run and its resumption (run fingerprint);
* ``in_name``: part of the run's name (a config digest); ``False`` for where things live,
  how long to run, and how to report;
* ``path``: a local path, made absolute by the launcher (the SuperLink may run elsewhere);
* ``node``: the SuperNode node-config key that overrides it on that node;
* ``setup``: part of what the report calls a setup (``False``: varies within a table or only
  says where things live).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A run-config key is unknown, has the wrong type, or holds an impossible value."""


@dataclass(frozen=True)
class Roles:
    help: str
    resumable: bool = False
    in_name: bool = True
    path: bool = False
    node: str = ""
    setup: bool = True


def key(
    default: Any,
    help: str,
    *,
    resumable: bool = False,
    in_name: bool = True,
    path: bool = False,
    node: str = "",
    setup: bool = True,
) -> Any:
    """A run-config field: its default, help text and roles (see the module docstring)."""
    roles = Roles(help, resumable, in_name, path, node, setup)
    return field(default=default, metadata={"roles": roles})


@dataclass(frozen=True)
class KeyInfo:
    """One flat run-config key, as Flower spells it (``section.field-name``)."""

    name: str
    section: str
    attr: str
    type: Any
    default: Any
    roles: Roles


def section_keys(section: str, cls: type) -> Iterator[KeyInfo]:
    """The keys of one section dataclass, in declaration order."""
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        roles = f.metadata.get("roles")
        if roles is None:
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with config key()")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        name = f"{section}.{f.name.replace('_', '-')}"
        yield KeyInfo(name, section, f.name, hints[f.name], default, roles)


def flatten(sections: Mapping[str, object]) -> dict[str, Any]:
    """{"train": TrainConfig(...)} -> {"train.lr": 0.002, ...} (Flower's flat spelling)."""
    out: dict[str, Any] = {}
    for section, obj in sections.items():
        for f in dataclasses.fields(obj):
            out[f"{section}.{f.name.replace('_', '-')}"] = getattr(obj, f.name)
    return out


def section_roles(sections: Mapping[str, object]) -> dict[str, KeyInfo]:
    """Flat key -> its declaration, for these section objects."""
    return {
        info.name: info for name, obj in sections.items() for info in section_keys(name, type(obj))
    }


def coerce(key_name: str, value: Any, hint: Any) -> Any:
    """Accept a value only if it already has the field's type (ints widen to floats)."""
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key_name} must be a finite number, got {value!r}")
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(
        f"{key_name} must be of type {hint.__name__}, got {type(value).__name__} {value!r}"
    )


def choice(key_name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key_name} must be one of {list(allowed)}, got {value!r}")
