"""Reading params.yaml (plus `section.key` overrides) into a validated Config, once, before any work.

Every value is checked against its field's type here, an unknown key or section is refused, and the result goes
through netslim.config.validation's range checks; each failure is a ConfigError of one line.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML, YAMLError
from ruamel.yaml.constructor import ConstructorError, DuplicateKeyError

from netslim.config.schema import Config, ConfigError, yaml_key
from netslim.config.validation import validate


def read_yaml(text: str) -> Any:
    """Parse YAML the way DVC does (YAML 1.2, ruamel): an unquoted 1e-4 is the number 0.0001 here
    exactly as in DVC's `${item}`, so a λ label that DVC would turn into another folder name is
    caught by validation instead of surfacing as a missing DVC output."""
    return YAML(typ="safe", pure=True).load(text)


def _check_type(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(key, value, option)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: {value!r} must be a list")
        (item_hint, _ellipsis) = typing.get_args(hint)
        return tuple(_check_type(f"{key}[{i}]", v, item_hint) for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: {value!r} must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: {value!r} must be a whole number")
        return value
    if hint is float:
        number = _float(value)
        if number is None:
            raise ConfigError(f"{key}: {value!r} must be a number")
        if not math.isfinite(number):
            raise ConfigError(f"{key}: {value!r} must be a finite number")
        return number
    if hint is str:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{key}: {value!r} must be a string")
        return value
    raise TypeError(f"unsupported config type {hint} for {key}")  # a bug in this file, not in params


def _float(value: Any) -> float | None:
    """A number as a float; None for what is not plainly one (a bool, a word, a number too large for a float)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:  # PyYAML reads `1e-4` (no dot) as a string; accept what is plainly a number
        return float(value)
    except (ValueError, OverflowError):
        return None


def section_from_dict(cls: type, raw: Any, prefix: str) -> Any:
    """One section's mapping as an instance of its dataclass `cls`, each value type-checked; `prefix` names the
    section in errors. Any file with a section of its own (studies/params.yaml) reads it so."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix}: {raw!r} must be a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    fields = {yaml_key(f.name): f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            raise ConfigError(f"{prefix}.{key}: unknown key; allowed keys are: {allowed}")
        name = fields[key]
        kwargs[name] = _check_type(f"{prefix}.{key}", value, hints[name])
    return cls(**kwargs)


def config_from_dict(raw: dict[str, Any] | None) -> Config:
    """Build and validate a Config from the parsed params.yaml mapping."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"params: the file must hold a mapping of sections, not {type(raw).__name__}")
    hints = typing.get_type_hints(Config)
    sections = {}
    for key, value in raw.items():
        if key not in hints:
            raise ConfigError(f"{key}: unknown section; allowed sections are: {', '.join(hints)}")
        sections[key] = section_from_dict(hints[key], value, key)
    config = Config(**sections)
    validate(config)
    return config


def load_config(path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None) -> Config:
    """Read params.yaml (plus optional {"section.key": value} overrides) into a validated Config."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a params file; pass --params PATH to a YAML file")
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found; run from the project root or pass --params PATH")
    try:
        raw = read_yaml(path.read_text())
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file; pass --params PATH to a YAML file") from None
    except YAMLError as e:
        raise ConfigError(f"{path}: {_yaml_problem(e)}") from None
    if raw is None:
        raise ConfigError(f"{path}: the file is empty; it must hold the pipeline's sections (see the committed one)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the file must hold a mapping of sections, not a {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if not key:
            raise ConfigError(f"{dotted}: an override must be section.key=value")
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{path}: section {section} is a {type(raw[section]).__name__}; it must be a mapping")
        raw[section][key] = value
    return config_from_dict(raw)


def _yaml_problem(error: YAMLError) -> str:
    """What is wrong with a YAML text, in words, with its line: a duplicate key and a tag are named as such."""
    mark = getattr(error, "problem_mark", None)
    where = f" (line {mark.line + 1})" if mark is not None else ""
    problem = getattr(error, "problem", None) or ""
    if isinstance(error, DuplicateKeyError):
        key = problem.split('"')[1] if problem.count('"') >= 2 else "?"
        return f"duplicate key {key!r}{where}; keep one of the two"
    if isinstance(error, ConstructorError) and "tag" in problem:
        tag = problem.split("'")[1] if problem.count("'") >= 2 else "?"
        return f"tags are not allowed ({tag!r}{where}); write a plain value"
    return f"not valid YAML{where}; fix the syntax"
