"""netslim ci-report (metric and params diff against a git revision) and the pull-request workflow.

The report on two real commits of a reproduced project is in test_pipeline.py, on that module's pipeline."""

from __future__ import annotations

import math
import re
import subprocess

import pytest
import yaml

from conftest import ROOT, committed_params
from netslim import cli
from netslim.ci_report import MARKER, Diff, render
from netslim.vocabulary import (
    BASELINE,
    EAGER_SPEEDUP,
    MEETS_CONSTRAINTS,
    NUM_PARAMS,
    TEST_ACC,
    finetuned_model,
    per_batch,
)

TUNED = f"reports/metrics/{finetuned_model('0.9')}.json"
SPEEDUP = per_batch(EAGER_SPEEDUP, 64)

WORKFLOW = ROOT / ".github" / "workflows" / "pr-metrics.yml"


def cell_number(text: str) -> float:
    """A markdown cell back to a number: '1,234' '+0.0123' '-3.5%' 'yes'."""
    text = text.strip().strip("`")
    if text in ("yes", "no"):
        return float(text == "yes")
    return float(text.replace(",", "").replace("%", ""))


def table_rows(markdown: str, heading: str) -> dict[str, list[str]]:
    """The rows of the table under `heading`, keyed by their first cell."""
    lines = markdown.splitlines()
    start = lines.index(heading)
    rows = {}
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def close(a: float, b: float) -> bool:
    """Equal to the 4 significant digits the report prints."""
    return math.isclose(a, b, rel_tol=6e-4, abs_tol=1e-12)


# ---- the report from dvc's diff ---------------------------------------------------------------------


def test_each_models_changed_metrics_become_a_table_with_deltas_and_percent_only_where_sensible():
    metrics = {
        TUNED: {
            TEST_ACC: {"old": 0.8, "new": 0.84, "diff": 0.04},
            NUM_PARAMS: {"old": 120000, "new": 110000, "diff": -10000},
            MEETS_CONSTRAINTS: {"old": False, "new": True},
        },
        f"reports/metrics/{BASELINE}.json": {TEST_ACC: {"old": 0.9, "new": 0.9, "diff": 0}},
    }
    params = {"params.yaml": {"finetune.lr": {"old": 0.001, "new": 0.0005}}}
    md = render("origin/main", "0123456789abcdef", Diff(metrics, []), Diff(params, []))
    assert md.startswith(MARKER + "\n")
    finetuned = table_rows(md, f"#### `{TUNED}`")
    assert list(finetuned) == ["metric", TEST_ACC, NUM_PARAMS, MEETS_CONSTRAINTS]  # accuracy first, then size
    assert finetuned[TEST_ACC] == ["0.8", "0.84", "+0.04", "+5.0%"]
    assert finetuned[NUM_PARAMS] == ["120,000", "110,000", "-10,000", "-8.3%"]
    assert finetuned[MEETS_CONSTRAINTS] == ["no", "yes", "—", "—"]  # a verdict has no delta
    assert BASELINE not in md  # an unchanged metric is no row and its model no table
    assert table_rows(md, "### Params")["finetune.lr"] == ["0.001", "0.0005"]
    assert "has no metrics to compare with" not in md and "Timings" not in md


def test_timings_come_after_the_metrics_folded_away_and_said_to_be_noisy():
    metrics = {TUNED: {TEST_ACC: {"old": 0.8, "new": 0.84, "diff": 0.04}}}
    timings = {"reports/timings/pruned_0.9.json": {SPEEDUP: {"old": 1.4, "new": 1.5, "diff": 0.1}}}
    md = render("main", "abc", Diff(metrics, []), Diff({}, []), Diff(timings, []))
    metrics_part, timings_part = md.split("### Timings")
    assert "speedup" not in metrics_part and TEST_ACC not in timings_part
    assert "<details><summary>Timings (noisy" in timings_part and "</details>" in timings_part
    assert table_rows(md, "#### `reports/timings/pruned_0.9.json`")[SPEEDUP] == ["1.4", "1.5", "+0.1", "+7.1%"]


def test_a_renamed_metric_shows_as_the_old_name_gone_and_the_new_one_added():
    """No old-to-new mapping: against a base from before a rename, the diff says what each revision called it."""
    timings = {"reports/timings/pruned_0.9.json": {"speedup_b64": {"old": 1.4}, SPEEDUP: {"new": 1.5}}}
    md = render("main", "abc", Diff({}, []), Diff({}, []), Diff(timings, []))
    rows = table_rows(md, "#### `reports/timings/pruned_0.9.json`")
    assert rows["speedup_b64"][:2] == ["1.4", "—"] and rows[SPEEDUP][:2] == ["—", "1.5"]


def test_nothing_changed_says_so_and_a_base_without_metrics_is_named():
    md = render("main", "abc", Diff({}, []), Diff({}, []))
    assert "No metric changed." in md and "No param changed." in md and "| metric |" not in md
    only_new = {TUNED: {TEST_ACC: {"old": None, "new": 0.7}}}
    md = render("main", "abc", Diff(only_new, ["ERROR: failed to load metrics at 'main'"]), Diff({}, []))
    assert "`main` has no metrics to compare with: commit `dvc.lock`" in md
    assert table_rows(md, f"#### `{TUNED}`")[TEST_ACC] == ["—", "0.7", "—", "—"]
    assert "> dvc: ERROR: failed to load metrics at 'main'" in md


@pytest.mark.parametrize(
    ("base", "expected"),
    [("origin/no-such-branch", ("'origin/no-such-branch'", "git fetch")), ("HEAD", ("not inside a DVC project",))],
    ids=["unknown-base", "no-dvc-project"],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, capsys, base, expected):
    # a git repo without `dvc init`: dvc's own diff would print {} there, which must not read as "no change"
    committed_params(tmp_path)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "empty"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "report.md"
    assert cli.main(["ci-report", "--base", base, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(word in err for word in expected), err
    assert not out.exists()


# ---- the workflow -----------------------------------------------------------------------------------


def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def job_steps(job: dict) -> list[dict]:
    """A job's steps, each local composite action (`uses: ./...`) replaced by its own steps."""
    steps = []
    for step in job["steps"]:
        uses = str(step.get("uses", ""))
        if uses.startswith("./"):
            action = yaml.safe_load((ROOT / uses / "action.yml").read_text())
            assert action["runs"]["using"] == "composite", uses
            steps += action["runs"]["steps"]
        else:
            steps.append(step)
    return steps


def all_steps() -> list[dict]:
    return [step for job in workflow()["jobs"].values() for step in job_steps(job)]


def run_lines(steps: list[dict] | None = None) -> list[str]:
    """Every shell line the steps (default: the whole workflow's) run, continuation lines joined, no comments."""
    scripts = [step["run"] for step in (all_steps() if steps is None else steps) if "run" in step]
    lines = [line.strip() for script in scripts for line in script.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", (ROOT / "Makefile").read_text(), re.MULTILINE))


def triggers() -> dict:
    flow = workflow()
    on = flow.get("on", flow.get(True))  # YAML 1.1 reads the key `on` as True
    return on if isinstance(on, dict) else dict.fromkeys(on if isinstance(on, list) else [on])


def test_workflow_runs_on_pull_requests_and_may_comment():
    flow = workflow()
    assert "pull_request" in triggers()
    metrics = flow["jobs"]["metrics"]
    assert "pull_request" in metrics["if"] and metrics["permissions"]["pull-requests"] == "write"
    assert "pull-requests" not in flow["permissions"]  # only the job that comments may write
    steps = job_steps(metrics)
    checkout = next(s for s in steps if str(s.get("uses", "")).startswith("actions/checkout"))
    assert checkout["with"]["fetch-depth"] == 0  # the base branch's metrics live in its commits
    python = next(s for s in steps if str(s.get("uses", "")).startswith("actions/setup-python"))
    assert str(python["with"]["python-version"]) == "3.11"
    script = "\n".join(run_lines(steps))
    assert MARKER in script and "PATCH" in script  # one comment, edited on later pushes
    assert "dvc plots diff" in script and any("upload-artifact" in str(s.get("uses")) for s in steps)


def test_test_job_runs_the_fast_tests_on_push():
    test = workflow()["jobs"]["test"]
    assert "push" in triggers() and "push" in test["if"]
    assert "make test-fast" in run_lines(job_steps(test))


def test_workflow_caches_pip_installs_cpu_torch_and_no_postgresql():
    for name, job in workflow()["jobs"].items():
        steps = job_steps(job)
        python = next(s for s in steps if str(s.get("uses", "")).startswith("actions/setup-python"))
        assert python["with"]["cache"] == "pip" and python["with"]["cache-dependency-path"] == "pyproject.toml", name
        setup = next(s for s in steps if "make setup" in str(s.get("run")))  # the pip install, before any make demo
        assert setup["env"]["PIP_EXTRA_INDEX_URL"] == "https://download.pytorch.org/whl/cpu", name
        assert "torch.version.cuda is None" in setup["run"], name  # the CPU build really came
        lines = run_lines(steps)
        assert not any("postgres" in line or "system-deps" in line for line in lines), name
        assert lines.index(next(x for x in lines if "make setup" in x)) < lines.index(
            next(x for x in lines if x.startswith("make ") and "setup" not in x)
        ), name


def test_workflow_uses_current_major_versions_of_its_actions():
    current = {"actions/checkout": "v6", "actions/setup-python": "v6", "actions/upload-artifact": "v7"}
    used = [str(s["uses"]) for s in all_steps() if "uses" in s]
    assert {u.split("@")[0] for u in used} == set(current)
    for uses in used:
        action, version = uses.split("@")
        assert version == current[action], uses


def test_every_netslim_and_make_command_in_the_workflow_exists():
    lines = run_lines()
    netslim_calls = [line[m.start(1) :] for line in lines if (m := re.search(r"(?:^|[\s/])netslim (\S+)", line))]
    make_calls = [m.group(1) for line in lines for m in re.finditer(r"(?:^|\s)make ([\w-]+)", line)]
    assert netslim_calls and make_calls
    assert "demo" in make_calls, "the workflow sets up and runs the pipeline with the README's command"
    assert set(make_calls) <= make_targets(), set(make_calls) - make_targets()
    for call in netslim_calls:
        name, *args = call.split()
        assert name in cli.STAGES, name
        module = __import__(cli.STAGES[name][0], fromlist=["add_arguments"])
        cli.stage_parser(name, module).parse_args([a.strip('"') for a in args])  # exits 2 on an unknown option
