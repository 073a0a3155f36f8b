"""`make demo`'s scheduler (netslim.parallel_repro): which stage may start, given what is done and what runs."""

from __future__ import annotations

import os

import yaml

from conftest import ROOT
from netslim.parallel_repro import Plan, workers_for

NEEDS = {"train": set(), "train_other": set(), "prune": {"train"}, "export": {"prune"}, "report": {"export"}}


def test_a_stage_starts_once_every_stage_it_needs_is_done():
    plan = Plan(list(NEEDS), NEEDS)
    assert plan.can_start("train", done=set(), running={"train_other"})
    assert not plan.can_start("prune", done=set(), running={"train"})
    assert plan.can_start("prune", done={"train"}, running={"train_other"})


def test_a_stage_that_runs_alone_waits_for_an_empty_machine_and_keeps_it_empty():
    plan = Plan(list(NEEDS), NEEDS, alone={"export"})
    assert not plan.can_start("export", done={"train", "prune"}, running={"train_other"})
    assert plan.can_start("export", done={"train", "prune"}, running=set())
    assert not plan.can_start("train_other", done=set(), running={"export"})


def test_the_export_runs_alone_because_it_times_models():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert [name for name, stage in stages.items() if (stage.get("meta") or {}).get("runs_alone")] == ["export"]


def test_as_many_stages_at_once_as_the_cpus_hold_at_the_threads_each():
    assert workers_for(None) == 1  # a stage with every CPU runs alone
    assert workers_for(1) == len(os.sched_getaffinity(0))  # one thread each: a stage per usable CPU
    assert workers_for(10_000) == 1
