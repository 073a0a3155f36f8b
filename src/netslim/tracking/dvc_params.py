"""What dvc.yaml says a stage reads and writes, and the params it lists as params.yaml writes them."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML, YAMLError

from netslim.config import Config, read_yaml

_TEMPLATE = re.compile(r"\$\{\s*([\w.-]+)\s*\}")


@dataclass(frozen=True)
class StageSpec:
    """A dvc.yaml stage as tracking needs it: its params keys as listed, its deps and outs with ${} resolved."""

    params: tuple[str, ...]
    deps: tuple[Path, ...]
    outs: tuple[Path, ...]


def dvc_stage(stage: str, config: Config, dvc_yaml: str | Path = "dvc.yaml") -> StageSpec | None:
    """The stage's entry in dvc.yaml (for a foreach stage, its `do`); None without such a file or stage."""
    path = Path(dvc_yaml)
    if not path.is_file():
        return None
    try:
        stages = (read_yaml(path.read_text()) or {}).get("stages") or {}
    except (YAMLError, AttributeError):
        return None  # DVC itself reports a broken dvc.yaml; tracking just logs no params
    entry = stages.get(stage)
    if not isinstance(entry, dict):
        return None
    entry = entry.get("do", entry)
    flat = config.to_flat_dict()

    def resolve(text: str) -> Path:  # ${paths.prepared} -> data/prepared; ${item} stays as written
        return Path(_TEMPLATE.sub(lambda m: str(flat.get(m.group(1), m.group(0))), str(text)))

    def paths(key: str) -> tuple[Path, ...]:  # an entry is a path, or {path: {cache: false, ...}}
        return tuple(resolve(p) for item in entry.get(key) or [] for p in (item if isinstance(item, dict) else [item]))

    keys: list[str] = []
    for item in entry.get("params") or []:
        if not isinstance(item, dict):
            keys.append(str(item))
            continue
        for file, listed in item.items():  # {params file: [keys]}; only params.yaml feeds the config
            if Path(file).name == "params.yaml":
                keys.extend(listed if listed else sorted({k.split(".")[0] for k in flat}))
    return StageSpec(tuple(keys), paths("deps"), paths("outs") + paths("metrics") + paths("plots"))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (tree or {}).items() if isinstance(tree, dict) else ():
        name = f"{prefix}{key}"
        out |= _flatten(value, f"{name}.") if isinstance(value, dict) else {name: value}
    return out


def param_text(value: Any) -> str:
    """A value as YAML would write it: null, true, [0.5, 0.75], 0.001."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(param_text(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(rounded(value))
    return str(value)


def rounded(value: float) -> float:
    """12 significant digits: a value computed as 0.002000000000000001 is shown as the 0.002 it means."""
    return float(f"{value:.12g}") if math.isfinite(value) else value


def stage_params(spec: StageSpec, config: Config, params_yaml: str | Path = "params.yaml") -> dict[str, str]:
    """Each key dvc.yaml lists for the stage (a section expands to its keys) with its value as written in
    params.yaml (`1.0e-3`, not 0.001); a value the file does not hold (a default, a `--set` override) as
    the config holds it."""
    flat = config.to_flat_dict()
    path = Path(params_yaml)
    text = path.read_text() if path.is_file() else ""
    written = _flatten(YAML(typ="base").load(text)) if text else {}
    typed = _flatten(read_yaml(text)) if text else {}
    out = {}
    for key in spec.params:
        for name in (k for k in flat if k == key or k.startswith(f"{key}.")):
            value = list(flat[name]) if isinstance(flat[name], tuple) else flat[name]
            same = name in written and typed.get(name) == value
            out[name] = param_text(written[name]) if same else param_text(value)
    return out
