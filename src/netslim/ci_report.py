"""Markdown for a pull request: how the metrics and params of the workspace differ from a git revision.

The numbers come from `dvc metrics diff --json REV` and `dvc params diff --json REV` (the project's own
dvc, the workspace against REV). Each metrics file gets a table (the report stage writes one file per
model, reports/metrics/<model>.json) with old, new, delta and relative change; params get one table of
old and new values. The timings (reports/timings/, not DVC metrics: they change on every rerun) get tables
of their own under a heading that says they are noisy, folded away. The first line is a hidden marker, so a
CI job can find its earlier comment on the pull request and edit it instead of adding another.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netslim.io import is_sane_number

MARKER = "<!-- netslim-metrics -->"
# Rows come in this order: accuracies, then model size and cost, then everything else by name.
_FIRST = ("acc", "params", "macs", "flops")
_ABSENT = "—"


class CIReportError(ValueError):
    """The report cannot be built (unknown revision, no git or dvc repo); the message says what to do."""


@dataclass(frozen=True)
class Change:
    """One metric or param whose value differs between the base revision and the workspace."""

    name: str
    old: Any
    new: Any

    @property
    def delta(self) -> float | None:
        if is_sane_number(self.old) and is_sane_number(self.new):
            return self.new - self.old
        return None

    @property
    def percent(self) -> float | None:
        """Relative change in %, only where it means something: numbers, and a nonzero old value."""
        delta = self.delta
        return None if delta is None or self.old == 0 else 100.0 * delta / abs(self.old)


@dataclass(frozen=True)
class Diff:
    """What `dvc metrics diff --json` or `dvc params diff --json` says, plus dvc's warnings."""

    files: dict[str, dict[str, dict[str, Any]]]
    warnings: list[str]


def dvc_executable() -> str:
    """The dvc installed beside this Python (the project's venv), else the one on PATH."""
    beside = Path(sys.executable).with_name("dvc")
    found = str(beside) if beside.is_file() else shutil.which("dvc")
    if not found:
        raise CIReportError("dvc: not found beside this Python or on PATH; run `make setup` (pip install -e .)")
    return found


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise CIReportError(f"{cmd[0]}: not found; install it (git and dvc are needed)") from None


def resolve_revision(rev: str, cwd: Path) -> str:
    """The commit SHA of `rev`, or a CIReportError that says how to make the revision available."""
    result = _run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd)
    if result.returncode != 0:
        inside = _run(["git", "rev-parse", "--is-inside-work-tree"], cwd)
        if inside.returncode != 0:
            raise CIReportError(f"{cwd}: not inside a git repository; run netslim ci-report in the project")
        raise CIReportError(
            f"--base {rev!r}: no such commit here; fetch it (git fetch origin <branch>, or checkout with "
            "fetch-depth: 0) or pass a branch, tag or SHA that `git log` shows"
        )
    return result.stdout.strip()


def require_dvc_project(cwd: Path) -> None:
    """dvc's diff commands print {} outside a DVC project; say so instead of reporting "no change"."""
    if not any((folder / ".dvc").is_dir() for folder in (cwd.resolve(), *cwd.resolve().parents)):
        raise CIReportError(f"{cwd}: not inside a DVC project (no .dvc folder here or above); run it in the project")


def dvc_diff(kind: str, rev: str, cwd: Path, unchanged: bool = False, targets: tuple[str, ...] = ()) -> Diff:
    """`dvc <kind> diff --json <rev>`: the workspace against `rev`, as {file: {key: {old, new, ...}}}; with
    `targets`, those files or folders instead of the declared ones."""
    options = ["--json", *(["--all"] if unchanged else []), rev]  # before --targets, which takes every word after it
    result = _run([dvc_executable(), kind, "diff", *options, *(["--targets", *targets] if targets else [])], cwd)
    if result.returncode != 0:
        raise CIReportError(f"dvc {kind} diff {rev}: {_last_line(result.stderr)}")
    try:
        files = json.loads(result.stdout or "{}")
    except json.JSONDecodeError:
        raise CIReportError(f"dvc {kind} diff --json {rev}: printed no JSON ({_last_line(result.stdout)})") from None
    # dvc exits 0 when it cannot read a revision's files and only says so on stderr: keep that visible.
    warnings = [line.strip() for line in result.stderr.splitlines() if "ERROR" in line or "failed" in line]
    return Diff(files=files, warnings=warnings)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def metric_tables(files: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, list[Change]]:
    """One table per metrics file and model, of the values that changed: {title: changes}.

    dvc joins nested keys with dots and model names hold dots too ("finetuned_0.9.test_acc"), so the
    metric is the part after the last dot (metric names never hold one) and the model is the rest.
    """
    tables: dict[str, list[Change]] = {}
    for path in sorted(files):
        for key, values in files[path].items():
            if _same(values.get("old"), values.get("new")):
                continue
            model, _, metric = key.rpartition(".")
            title = f"`{path}` · {model}" if model else f"`{path}`"
            tables.setdefault(title, []).append(Change(metric, values.get("old"), values.get("new")))
    return {title: sorted(changes, key=_row_order) for title, changes in tables.items()}


def param_changes(files: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[Change]:
    """Changed params; keys of params files other than params.yaml are prefixed with their file."""
    changes = []
    for path in sorted(files):
        prefix = "" if Path(path).name == "params.yaml" else f"{path}:"
        changes += [Change(prefix + key, v.get("old"), v.get("new")) for key, v in files[path].items()]
    return sorted(changes, key=lambda c: c.name)


def _same(old: Any, new: Any) -> bool:
    both_nan = isinstance(old, float) and isinstance(new, float) and math.isnan(old) and math.isnan(new)
    return old == new or both_nan


def has_base_metrics(files: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> bool:
    """Whether the base revision had any metric at all (needs the diff with unchanged values)."""
    return any(v.get("old") is not None for keys in files.values() for v in keys.values())


def _row_order(change: Change) -> tuple[int, str]:
    rank = next((i for i, word in enumerate(_FIRST) if word in change.name), len(_FIRST))
    return rank, change.name


def format_value(value: Any) -> str:
    """A cell: thousands separators for counts, 4 significant digits for measurements."""
    if value is None:
        return _ABSENT
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float) and not is_sane_number(value):  # NaN, inf, a 309-digit number: a broken file
        return f"**not a finite metric ({value:.4g})**"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return f"`{value}`".replace("|", "\\|")


def format_delta(change: Change) -> tuple[str, str]:
    """(delta, relative change) cells, each with its sign; absent where they make no sense."""
    delta = change.delta
    if delta is None:
        return _ABSENT, _ABSENT
    text = format_value(delta)
    text = text if text.startswith("-") else f"+{text}"
    percent = change.percent
    return text, _ABSENT if percent is None else f"{percent:+.1f}%"


TIMINGS_NOTE = (
    "Throughputs and speedups, measured on the machine that ran the stages under its load at the time: a rerun with "
    "nothing changed moves them by 10-25%. Each file is one measurement (a pruned model timed interleaved with the "
    "sparse model it was pruned from): compare the speedups inside it, not throughputs across runs."
)


def _tables(changed: Mapping[str, list[Change]]) -> list[str]:
    lines = []
    for title, changes in changed.items():
        lines += [f"#### {title}", "", "| metric | old | new | delta | change |", "|---|---:|---:|---:|---:|"]
        for change in changes:
            delta, percent = format_delta(change)
            lines.append(
                f"| {change.name} | {format_value(change.old)} | {format_value(change.new)} | {delta} | {percent} |"
            )
        lines.append("")
    return lines


def render(base: str, sha: str, metrics: Diff, params: Diff, timings: Diff | None = None) -> str:
    """The whole comment: metric tables, the params table, the (noisy) timings folded away, and a line for whatever
    did not change."""
    timings = timings or Diff({}, [])
    lines = [MARKER, f"## netslim: metrics and params against `{base}` ({sha[:8]})", ""]
    lines += [f"> dvc: {warning}" for warning in metrics.warnings + params.warnings]
    tables = metric_tables(metrics.files)
    if metrics.files and not has_base_metrics(metrics.files):
        lines += [
            f"`{base}` has no metrics to compare with: commit `dvc.lock` and the metrics files on the base branch.",
            "",
        ]
    lines += ["### Metrics", "", *_tables(tables)]
    if not tables:
        lines += ["No metric changed.", ""]
    timing_tables = metric_tables(timings.files)
    if timing_tables:
        summary = "Timings (noisy: they change on every rerun)"
        lines += ["### Timings", "", f"<details><summary>{summary}</summary>", "", TIMINGS_NOTE, ""]
        lines += [f"> dvc: {warning}" for warning in timings.warnings]
        lines += [*_tables(timing_tables), "</details>", ""]
    lines += ["### Params", ""]
    changed = param_changes(params.files)
    if changed:
        lines += ["| param | old | new |", "|---|---:|---:|"]
        lines += [f"| {c.name} | {format_value(c.old)} | {format_value(c.new)} |" for c in changed]
    else:
        lines.append("No param changed.")
    return "\n".join(lines) + "\n"


def build_report(base: str, cwd: str | Path = ".", timings: str = "reports/timings") -> str:
    """The markdown comparing the workspace of the project at `cwd` with the git revision `base`; `timings` is the
    report stage's folder of timings (<paths.reports>/timings), relative to `cwd`."""
    cwd = Path(cwd)
    sha = resolve_revision(base, cwd)
    require_dvc_project(cwd)
    # Unchanged metrics too, to tell "the base has no metrics" from "only new metrics appeared".
    metrics = dvc_diff("metrics", base, cwd, unchanged=True)
    timed = dvc_diff("metrics", base, cwd, targets=(timings,))
    return render(base, sha, metrics, dvc_diff("params", base, cwd), timed)
