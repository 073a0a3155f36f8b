"""The real `dvc repro` of the real dvc.yaml, in a temporary git repository, on a tiny profile."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import OPTIONAL_PIPELINES, ROOT, committed_stage_file, run_process, tiny_params, write_params
from netslim import vocabulary as vocab
from netslim.ci_report import MARKER
from netslim.config import read_yaml
from test_ci_report import cell_number, close, table_rows

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")


def run(cmd: list[str], cwd: Path, columns: int | None = None) -> str:
    """stdout and stderr of `cmd`, which must succeed; with `columns`, as printed on a terminal that wide."""
    env = os.environ | {"COLUMNS": str(columns)} if columns else None
    result = run_process(cmd, cwd=cwd, env=env)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A git + DVC project holding the real dvc.yaml and sources, with tiny params, reproduced once."""
    from conftest import write_fashion_mnist

    tmp = tmp_path_factory.mktemp("pipeline")
    repo = tmp / "repo"
    repo.mkdir()
    fmnist = write_fashion_mnist(tmp / "fmnist")
    shutil.copy(ROOT / "dvc.yaml", repo)
    # the optional pipelines as the repository commits them: DVC must not list them before they are run
    for committed in (*OPTIONAL_PIPELINES.values(), "studies/params.yaml"):
        (repo / committed).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / committed, repo / committed)
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    # one thread a stage, as params.yaml runs the demo: the demo's side-by-side stages must equal this `dvc repro`
    params = tiny_params(tmp, fmnist, prune={"ratios": [0.5, 0.9]}, runtime={"threads": 1})
    write_params(repo / "params.yaml", params)
    run(["git", "init", "-q"], repo)
    run([DVC, "init", "-q"], repo)
    # the project's DVC settings (`dvc plots show`'s offline page) and plot templates; `make setup` built the page
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")
    run([DVC, "remote", "add", "-f", "-d", "local", str(tmp / "remote")], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny project"], repo)
    first = run([DVC, "repro"], repo)
    assert (
        ran_stages(first)
        == {"prepare", "train@0", "train@1", "prune@0", "prune@1", "finetune@0", "finetune@1", "export", "report"}
        or len(ran_stages(first)) == 9
    ), first
    return repo


def test_every_declared_output_exists_and_metrics_are_in_range(project):
    for path in [
        "data/prepared/train.pt",
        "models/sparse/1e-4/best.pt",
        "models/sparse/0/last.pt",
        "models/pruned/0.5.pt",
        "models/pruned/0.9.pt",
        "models/finetuned/0.9.pt",
        "reports/train/1e-4/history.csv",
        "reports/prune/0.9/channels.csv",
        "reports/finetune/0.9/history.csv",
        "models/exported/finetuned_0.9.onnx",
        "reports/export/metrics.json",
        "reports/report.md",
        "reports/summary.csv",
        "reports/metrics/sparse_lambda_1e-4.json",
        "reports/timings/pruned_0.9.json",
        "reports/curves/finetuning.csv",
    ]:
        assert (project / path).is_file(), path
    for metrics in project.glob("reports/*/*/metrics.json"):
        written = json.loads(metrics.read_text())
        assert [key for key in written if not vocab.is_metric(key)] == [], metrics  # one vocabulary
        for key, value in written.items():
            assert isinstance(value, int | float), (metrics, key)
            if key.endswith("acc") or "_acc_" in key:
                assert 0 <= value <= 1, (metrics, key, value)
            if key.startswith(("num_params", "macs", "flops")) and "ratio" not in key:
                assert value > 0, (metrics, key, value)
    pruned = json.loads((project / "reports/prune/0.9/metrics.json").read_text())
    for key in (vocab.NUM_PARAMS, vocab.MACS):
        assert pruned[key] < pruned[vocab.of_sparse(key)], key
    exported = json.loads((project / "reports/export/metrics.json").read_text())
    models = {key: value for key, value in exported.items() if key not in vocab.EXPORT_SETTINGS}
    assert set(models) == {vocab.train_model("1e-4"), vocab.finetuned_model("0.5"), vocab.finetuned_model("0.9")}
    assert [(m, k) for m, values in models.items() for k in values if not vocab.is_metric(k)] == []


def models_of(repo: Path) -> set[str]:
    """The models params.yaml makes: one per λ of sparsity training, a pruned and a fine-tuned one per ratio."""
    params = read_yaml((repo / "params.yaml").read_text())
    trained = {vocab.train_model(lam) for lam in params["train"]["lambdas"]}
    ratios = params["prune"]["ratios"]
    return trained | {m(str(r)) for r in ratios for m in (vocab.pruned_model, vocab.finetuned_model)}


def test_metrics_show_prints_a_row_per_model_of_params_yaml_in_160_columns_without_warning(project):
    result = run_process([DVC, "metrics", "show"], cwd=project, env=os.environ | {"COLUMNS": "160"})
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["Path", "macs", "meets_constraints", "num_params", "test_acc"]
    assert {row.split()[0] for row in rows} == {f"reports/metrics/{model}.json" for model in models_of(project)}
    assert max(len(line) for line in result.stdout.splitlines()) <= 160
    assert not any("-" in row.split()[1:] for row in rows)  # no model misses a value


def test_timings_are_shown_apart_from_the_metrics(project):
    metrics = json.loads(run([DVC, "metrics", "show", "--json"], project))
    shown = json.dumps(metrics)
    assert "throughput" not in shown and "speedup" not in shown and "images_per_s" not in shown
    timings = json.loads(run([DVC, "metrics", "show", "--json", "reports/timings"], project))
    (workspace,) = timings.values()  # dvc keys the workspace "" here
    files = workspace["data"]
    ratios = read_yaml((project / "params.yaml").read_text())["prune"]["ratios"]
    assert set(files) == {f"reports/timings/{kind}_{r}.json" for r in ratios for kind in ("pruned", "exported")}
    pruned = files["reports/timings/pruned_0.9.json"]["data"]
    ips = vocab.EAGER_IMAGES_PER_S
    rates = [pruned[vocab.per_batch(key, 64)] for key in (ips, vocab.of_sparse(ips))]
    assert pruned[vocab.per_batch(vocab.EAGER_SPEEDUP, 64)] == pytest.approx(rates[0] / rates[1])


def test_plots_show_renders_offline_the_lambda_and_ratio_overlays(project):
    if not (ROOT / ".dvc/plots/offline.html").is_file():
        pytest.fail("no .dvc/plots/offline.html: `make setup` builds it (the page with vega bundled)")
    run([DVC, "plots", "show", "--out", "shown"], project)
    page = (project / "shown" / "index.html").read_text()
    assert not re.search(r"<script[^>]*\bsrc=", page)  # every script inline: nothing loaded from a CDN
    assert page.count("vegaEmbed(") >= 4 and "vega-lite" in page  # the bundles and one call per vega plot
    plots = json.loads(run([DVC, "plots", "show", "--json"], project))["data"]
    params = read_yaml((project / "params.yaml").read_text())
    lambdas, ratios = params["train"]["lambdas"], params["prune"]["ratios"]
    for plot, per, labels in (
        ("sparsity_training_test_acc", "λ", {f"λ = {lam}" for lam in lambdas}),
        ("sparsity_training_sparsity", "λ", {f"λ = {lam}" for lam in lambdas}),
        ("finetuning_test_acc", "prune ratio", {f"pruned {float(r):.0%}" for r in ratios}),
    ):
        (spec,) = [r["content"] for r in plots[plot] if r["type"] == "vega"]
        assert f"at each {per}" in spec["title"], spec["title"]
        lines = {row["model"] for row in spec["data"]["values"]}
        assert {next(label for label in labels if label in line) for line in lines} == labels, lines  # one each


def test_a_second_repro_runs_no_stage(project):
    assert ran_stages(run([DVC, "repro"], project)) == set()


def commit_all(repo: Path, message: str) -> str:
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", message], repo)
    return run(["git", "rev-parse", "HEAD"], repo).strip()


@pytest.fixture(scope="module")
def finetune_lr_changed(project) -> tuple[str, str, set[str]]:
    """The reproduced project committed, then finetune.lr changed, reproduced and committed again, as a pull
    request would: (first commit, second commit, the stages the second `dvc repro` ran)."""
    first = commit_all(project, "reproduced")
    params = read_yaml((project / "params.yaml").read_text())  # as DVC reads it: PyYAML would unquote 1e-06
    params["finetune"]["lr"] = 1e-3
    write_params(project / "params.yaml", params)
    stages = ran_stages(run([DVC, "repro"], project))
    return first, commit_all(project, "finetune.lr=1e-3"), stages


def test_changing_a_finetune_key_reruns_only_finetune_export_and_report(finetune_lr_changed):
    *_, stages = finetune_lr_changed
    assert stages and all(s.startswith("finetune") or s in ("export", "report") for s in stages), stages
    assert "report" in stages


def metrics_at(repo: Path, sha: str, folder: str) -> dict[tuple[str, str], object]:
    """Every value of the JSON files under `folder` at a commit, read straight from git: {(file, key): value}."""
    files = run(["git", "ls-tree", "-r", "--name-only", sha, folder], repo).split()
    assert files, f"{folder} holds no file at {sha}"
    return {
        (path, key): value
        for path in files
        for key, value in json.loads(run(["git", "show", f"{sha}:{path}"], repo)).items()
    }


def test_ci_report_shows_every_changed_metric_and_timing_apart_and_the_changed_param(project, finetune_lr_changed):
    first, second, _ = finetune_lr_changed
    out = project / "pr-report.md"
    run([str(BIN / "netslim"), "ci-report", "--base", first, "--out", str(out)], project)
    md = out.read_text()
    assert md.startswith(MARKER) and first[:8] in md
    metrics_part, timings_part = md.split("### Timings")
    assert "noisy" in timings_part

    for folder, part in (("reports/metrics", metrics_part), ("reports/timings", timings_part)):
        old, new = metrics_at(project, first, folder), metrics_at(project, second, folder)
        changed = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
        # what came before fine-tuning did not run again: only the fine-tuned models and their exports changed (the
        # exports' timings always do; a tiny model's accuracy may not)
        assert {Path(path).stem.split("_")[0] for path, _ in changed} <= {"finetuned", "exported"}, changed
        assert changed or folder == "reports/metrics"
        for path, metric in sorted(changed):
            rows = table_rows(part, f"#### `{path}`")
            assert metric in rows, f"{path} {metric} changed but is not in its section:\n{md}"
            old_cell, new_cell, delta_cell, _ = rows[metric]
            a, b = float(old[path, metric]), float(new[path, metric])
            assert close(cell_number(old_cell), a) and close(cell_number(new_cell), b), (metric, rows[metric], a, b)
            if isinstance(new[path, metric], bool):  # a yes/no verdict has no delta
                assert delta_cell == "—", (metric, rows[metric])
            else:
                assert close(cell_number(delta_cell), b - a), (metric, delta_cell, b - a)
        # and nothing else: the values that stayed the same (e.g. the sparse models') are left out
        headings = [line for line in part.splitlines() if line.startswith("#### ")]
        assert sum(len(table_rows(part, h)) - 1 for h in headings) == len(changed), md

    params = table_rows(md, "### Params")
    assert set(params) == {"param", "finetune.lr"}, params
    assert [cell_number(c) for c in params["finetune.lr"]] == [3e-3, 1e-3]


def test_push_then_pull_restores_identical_checkpoints(project):
    checkpoints = sorted(project.glob("models/**/*.pt"))
    before = {p: sha(p) for p in checkpoints}
    run([DVC, "push"], project)
    shutil.rmtree(project / ".dvc" / "cache")
    for path in checkpoints:  # not the whole folder: DVC's .gitignore files there keep the outputs out of git
        path.unlink()
    run([DVC, "pull"], project)
    assert {p: sha(p) for p in checkpoints} == before


def test_the_demo_reproduces_params_yaml_as_a_named_experiment_and_leaves_dvc_status_clean(project):
    """`make demo` = `python -m netslim.demo`: params.yaml as committed, as the experiment demo-<time>."""
    commit_all(project, "reproduced, before the demo")
    before = (project / "params.yaml").read_bytes()

    output = run([sys.executable, "-m", "netslim.demo"], project)

    assert (project / "params.yaml").read_bytes() == before
    assert ran_stages(output) == set(), "the committed dvc.lock is this params.yaml's: nothing to rerun"
    names = run([DVC, "exp", "list", "--name-only"], project).split()
    assert any(re.fullmatch(r"demo-\d{8}-\d{6}", name) for name in names), names
    assert "Data and pipelines are up to date." in run([DVC, "status"], project)
    assert run(["git", "diff", "--cached", "--name-only"], project).strip() == ""


STAGE_LINE = re.compile(r"^(\S+)\s+\| (started|finished)")


def running_side_by_side(demo: subprocess.Popen, lines: list[str]) -> set[str]:
    """Read the demo's lines until two stages run at once; those stages (empty if the demo ended first)."""
    running: set[str] = set()
    for line in demo.stdout:
        lines.append(line)
        if match := STAGE_LINE.match(line):
            stage, event = match.groups()
            (running.add if event == "started" else running.discard)(stage)
            if len(running) == 2:
                return running
    return set()


def test_the_demo_runs_independent_stages_side_by_side_stops_them_together_and_equals_dvc_repro(project, tmp_path):
    """`make demo` on a fresh clone of the reproduced project: nothing cached, every stage runs, two at once (one
    thread each, on a machine of two or more CPUs). Ctrl-C stops both; the next demo finishes, equal to the digit to
    the fixture's one-after-another `dvc repro` of the same params."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: the demo runs one stage at a time (runtime.threads: 1)")
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "--allow-empty", "-m", "reproduced"], project)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    demo = subprocess.Popen(
        [sys.executable, "-m", "netslim.demo"],
        cwd=clone,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    both = running_side_by_side(demo, lines)
    assert len(both) == 2 and any(s.startswith("train@") for s in both), "".join(lines)
    time.sleep(2)  # into their work
    os.killpg(demo.pid, signal.SIGINT)
    lines.append(demo.stdout.read())
    assert demo.wait(timeout=120) == 128 + signal.SIGINT, "".join(lines)
    assert processes_in(clone) == [], "no stage outlives the demo"
    assert run(["git", "diff", "--cached", "--name-only"], clone).strip() == ""

    run([sys.executable, "-m", "netslim.demo"], clone)

    assert "Data and pipelines are up to date." in run([DVC, "status"], clone)
    metrics = sorted(p.relative_to(project) for p in (project / "reports" / "metrics").glob("*.json"))
    assert {"pruned_0.5", "pruned_0.9", "finetuned_0.5", "finetuned_0.9"} <= {p.stem for p in metrics}, metrics
    for path in metrics:
        assert json.loads((clone / path).read_text()) == json.loads((project / path).read_text()), path


def test_a_profile_runs_as_its_own_named_experiment_and_only_what_it_changes_reruns(project):
    """`make seed` = the same with --profile: `dvc exp run -S` for every key, and DVC's workspace afterwards."""
    (project / "profiles").mkdir(exist_ok=True)
    (project / "profiles" / "tiny.yaml").write_text("export.repeats: 2  # only the export and the report rerun\n")
    commit_all(project, "a profile")

    output = run([sys.executable, "-m", "netslim.demo", "--profile", "profiles/tiny.yaml", "--name", "tiny"], project)

    assert ran_stages(output) == {"export", "report"}, output  # the changed stage and what follows it
    assert any(name.startswith("tiny-") for name in run([DVC, "exp", "list", "--name-only"], project).split())
    assert read_yaml((project / "params.yaml").read_text())["export"]["repeats"] == 2  # DVC's convention
    assert "Data and pipelines are up to date." in run([DVC, "status"], project)
    run(["git", "checkout", "--", "params.yaml", "dvc.lock"], project)
    run([DVC, "checkout", "-q"], project)


def processes_in(folder: Path) -> list[str]:
    """The command lines of the processes whose working directory is `folder` (a stage DVC started runs there)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cwd").resolve() == folder.resolve():
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:  # gone, or not ours to read
            continue
    return found


def interrupt_demo(project: Path, signum: int) -> tuple[int, str]:
    """Start the demo as a terminal would (its own process group), signal that group in a training stage's epochs
    (after the first epoch it reports of four: the first demo stops during epoch 2, the resumed one during epoch 3)."""
    demo = subprocess.Popen(
        [sys.executable, "-m", "netslim.demo", "--profile", "profiles/longer.yaml", "--name", "longer"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines = []
    for line in demo.stdout:
        lines.append(line)
        if line.startswith("train λ=") and " epoch " in line:
            os.killpg(demo.pid, signum)
            break
    lines.append(demo.stdout.read())
    return demo.wait(timeout=120), "".join(lines)


def test_an_interrupted_demo_leaves_nothing_staged_no_stage_running_and_the_next_demo_completes(project):
    (project / "profiles").mkdir(exist_ok=True)
    (project / "profiles" / "longer.yaml").write_text("train.epochs: 4\n")
    commit_all(project, "a longer profile")
    params = (project / "params.yaml").read_bytes()
    head = run(["git", "rev-parse", "HEAD"], project)

    for signum in (signal.SIGINT, signal.SIGTERM):
        code, output = interrupt_demo(project, signum)

        assert code == 128 + signum, output
        last = output.strip().splitlines()[-1]
        assert "interrupted" in last and "python -m netslim.demo --profile profiles/longer.yaml" in last, output
        assert "Traceback" not in output, output  # the stage says it was interrupted in one line too:
        assert re.search(r"^error: interrupted by SIG(INT|TERM): `netslim train --lambda", output, re.M), output
        assert processes_in(project) == [], "no stage outlives the demo"
        assert run(["git", "diff", "--cached", "--name-only"], project).strip() == "", "nothing left staged"
        assert (project / "params.yaml").read_bytes() == params
        assert run(["git", "rev-parse", "HEAD"], project) == head

    longer = [sys.executable, "-m", "netslim.demo", "--profile", "profiles/longer.yaml", "--name", "longer"]
    output = run(longer, project)
    assert {"report"} <= ran_stages(output), output
    assert "Data and pipelines are up to date." in run([DVC, "status"], project)
    run(["git", "checkout", "--", "params.yaml", "dvc.lock"], project)
    run([DVC, "checkout", "-q"], project)


def test_the_exp_show_recipe_fits_160_columns(project):
    """`make exp-show` (README "DVC views") after the demo's experiment: every column whole, no line too long."""
    shown = run(["make", "-s", "-f", str(ROOT / "Makefile"), "exp-show", f"BIN={BIN}", "STAMP="], project, columns=160)
    lines = shown.splitlines()
    assert max(len(line) for line in lines) <= 160 and "…" not in shown, shown
    header = lines[1].split()
    assert header[:2] == ["Experiment", "Created"] and "prune.lambda" in header, header
    assert [h for h in header if h.endswith(":test_acc")] == [
        f"reports/metrics/finetuned_{r}.json:test_acc" for r in (0.5, 0.9)
    ]
    experiment = run([DVC, "exp", "list", "--name-only"], project).split()[0]
    assert experiment in shown


def test_a_tiny_search_after_the_pipeline_writes_best_json_trials_csv_and_plots(project):
    """`make search` (`dvc repro search/dvc.yaml`) on the reproduced workspace, as a user runs it after `make demo`."""
    from netslim.search.figures import FIGURES
    from netslim.search.study import METRIC

    shutil.copy(committed_stage_file("search/dvc.yaml"), project / "search" / "dvc.yaml")  # as `make search` does
    assert ran_stages(run([DVC, "repro", "search/dvc.yaml"], project)) == {"search/dvc.yaml:search"}
    out = project / "reports" / "search"
    for name in ("best.json", "trials.csv", *FIGURES):
        assert (out / name).stat().st_size > 0, name
    best = json.loads((out / "best.json").read_text())
    assert 0 <= best["val_acc"] <= 1 and best["command"].startswith("dvc exp run -S ")
    import optuna

    study = optuna.load_study(study_name="netslim", storage=f"sqlite:///{out / 'study.db'}")
    assert study.metric_names == [METRIC] and len(study.trials) == 2
