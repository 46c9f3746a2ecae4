"""Flat Flower run config <-> typed sections, and everything derived from the key declarations.

Flower's run config is a flat mapping of scalars (``"train.lr" = 0.002``). Every key is
``<section>.<field>`` with hyphens for underscores; this module turns the mapping into the nested
dataclasses and rejects unknown keys, wrong types and impossible values before any work starts.
Nothing deeper in the code reads the raw mapping. The role sets (resumable keys, path keys, ...)
and the README's reference table are computed here from the fields' declarations.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from functools import cache
from typing import Any

from task.config.app import AppConfig, ClientSection, RunSection, ServerConfig, check_app
from task.config.core import RunConfig
from task.config.fields import ConfigError, KeyInfo, coerce, flatten, section_keys

APP_SECTIONS = {"server": ServerConfig, "run": RunSection, "client": ClientSection}


def _core_sections() -> dict[str, type]:
    return {f.name: f.default_factory().__class__ for f in dataclasses.fields(RunConfig)}


@cache
def key_info() -> dict[str, KeyInfo]:
    """Every run-config key, in declaration order: flat name -> its type, default and roles."""
    out: dict[str, KeyInfo] = {}
    for section, cls in {**_core_sections(), **APP_SECTIONS}.items():
        for info in section_keys(section, cls):
            out[info.name] = info
    return out


def keys_where(**roles: Any) -> frozenset[str]:
    """The keys whose roles have these values, e.g. ``keys_where(resumable=True)``."""
    return frozenset(
        name
        for name, info in key_info().items()
        if all(getattr(info.roles, r) == v for r, v in roles.items())
    )


def defaults() -> dict[str, Any]:
    """The default of every key (what pyproject.toml's table must hold; a test checks it)."""
    return {name: info.default for name, info in key_info().items()}


# -- parsing ----------------------------------------------------------------------------------
def parse_run_config(flat: Mapping[str, Any], base: RunConfig | None = None) -> RunConfig:
    """A validated RunConfig from flat ``section.field`` keys (hyphens or underscores) of the
    ML sections. Unknown keys raise ConfigError with a suggestion."""
    cfg = _deep_copy(base) if base is not None else RunConfig()
    sections = _core_sections()
    for raw_key, value in flat.items():
        section_name, _, field_name = raw_key.partition(".")
        section_name = section_name.replace("-", "_")
        if section_name not in sections or not field_name:
            raise ConfigError(_unknown("section", raw_key, list(sections)))
        _set(getattr(cfg, section_name), section_name, field_name, raw_key, value)
    _validate(cfg)
    return cfg


def parse_app_config(flat: Mapping[str, Any]) -> AppConfig:
    """Split the flat run config by section: ML keys to RunConfig, the rest to server/run/client."""
    core_keys: dict[str, Any] = {}
    sections = {name: cls() for name, cls in APP_SECTIONS.items()}
    for raw_key, value in flat.items():
        section_name, _, field_name = raw_key.partition(".")
        if section_name not in sections:
            core_keys[raw_key] = value
            continue
        _set(sections[section_name], section_name, field_name, raw_key, value)
    for obj in sections.values():
        obj.validate()
    cfg = AppConfig(parse_run_config(core_keys), **sections)
    check_app(cfg)
    return cfg


def to_flat(cfg: RunConfig | AppConfig) -> dict[str, Any]:
    """Inverse of the parsers: the flat, hyphenated mapping (for run directories)."""
    if isinstance(cfg, AppConfig):
        return cfg.to_flat()
    return flatten({f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})


def _set(section: object, section_name: str, field_name: str, raw_key: str, value: Any) -> None:
    attr = field_name.replace("-", "_")
    fields = {f.name: f for f in dataclasses.fields(section)}
    if attr not in fields:
        known = [f"{section_name}.{n.replace('_', '-')}" for n in fields]
        raise ConfigError(_unknown("key", raw_key, known))
    info = key_info()[f"{section_name}.{attr.replace('_', '-')}"]
    object.__setattr__(section, attr, coerce(raw_key, value, info.type))


def _validate(cfg: RunConfig) -> None:
    """Every section's own checks, with the data section's plain ValueErrors as ConfigError."""
    for f in dataclasses.fields(cfg):
        check = getattr(getattr(cfg, f.name), "validate", None)
        if check is None:
            continue
        try:
            check()
        except ConfigError:
            raise
        except ValueError as err:
            raise ConfigError(str(err)) from err


def _deep_copy(cfg: RunConfig) -> RunConfig:
    return RunConfig(
        **{f.name: dataclasses.replace(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    )


def _unknown(kind: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {sorted(known)}"
    return f"unknown run-config {kind} {name!r}{hint}"


# -- the README's reference table -------------------------------------------------------------
def _toml_default(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{value}`"


def reference_table() -> str:
    """The README's configuration reference (markdown), one row per key, from the fields."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for name, info in key_info().items():
        default = _toml_default(info.default)
        if isinstance(info.default, bool):
            default = f"`{default}`"
        rows.append(f"| `{name}` | {default} | {info.roles.help} |")
    return "\n".join(rows) + "\n"
