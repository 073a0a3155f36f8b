"""Independent stages of dvc.yaml side by side: `make demo` reproduces the pipeline this way before it records it.

DVC runs one stage at a time. Here each stage that needs to run gets its own `dvc repro --single-item` as soon as
every stage it depends on has finished, up to `workers` at once (the CPUs divided by runtime.threads). DVC keeps its
lock and cache consistent: it releases the repository lock while a stage's command runs and takes it again (we pass
--wait-for-lock) to record the stage in dvc.lock, and its per-output read/write locks keep two stages from touching
the same files; a stage whose dvc.yaml `meta` says `runs_alone` (the export, which times models) runs with
nothing beside it. A stage's results do not depend on what runs beside it (runtime.threads fixes its thread count), so
they equal those of a plain `dvc repro` to the digit. The stages' lines are printed as they come, each after the
stage's name.

A SIGINT or SIGTERM stops launching and is passed to every running stage as SIGINT (see netslim.demo).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

GRACE_SECONDS = 60.0  # a stage that ignores SIGINT this long is terminated (then killed 10 s later)


@dataclass
class Plan:
    """The stages to run in the order they are started (wave by wave, see `plan`), for each the planned stages it
    must wait for, and those that must run with nothing beside them."""

    stages: list[str]
    needs: dict[str, set[str]] = field(default_factory=dict)
    alone: set[str] = field(default_factory=set)  # stages that time something: nothing runs beside them

    def can_start(self, stage: str, done: set[str], running: set[str]) -> bool:
        """Every stage it needs is done, and neither it nor a running stage must run alone."""
        if not self.needs[stage] <= done:
            return False
        return not running or (stage not in self.alone and not running & self.alone)


def _closure(start: str, edges: dict[str, set[str]]) -> set[str]:
    """Every stage reachable from `start` along `edges`, `start` itself excluded."""
    seen: set[str] = set()
    todo = list(edges.get(start, ()))
    while todo:
        stage = todo.pop()
        if stage not in seen:
            seen.add(stage)
            todo.extend(edges.get(stage, ()))
    return seen


def plan(dvc_file: str = "dvc.yaml") -> Plan:
    """What `dvc repro dvc_file` would run: the stages DVC reports changed and every stage downstream of them.

    A downstream stage whose inputs turn out unchanged costs one DVC start-up: DVC skips it.
    """
    from dvc.repo import Repo

    with Repo(".") as repo:
        ours = [stage for stage in repo.index.stages if stage.relpath == dvc_file]
        names = {stage.addressing for stage in ours}
        upstream: dict[str, set[str]] = {name: set() for name in names}  # a stage -> the stages it reads from
        for stage, dependency in repo.index.graph.edges:
            if stage.addressing in names and dependency.addressing in names:
                upstream[stage.addressing].add(dependency.addressing)
        changed = set(repo.status(targets=[dvc_file])) & names
        alone = {stage.addressing for stage in ours if (stage.meta or {}).get("runs_alone")}
    downstream: dict[str, set[str]] = {name: set() for name in names}
    for name, sources in upstream.items():
        for source in sources:
            downstream[source].add(name)
    run = changed.union(*(_closure(name, downstream) for name in changed))
    order = [stage.addressing for stage in ours]
    depth: dict[str, int] = {}

    def depth_of(name: str) -> int:  # the longest chain of stages it waits for
        if name not in depth:
            depth[name] = 1 + max((depth_of(source) for source in upstream[name]), default=-1)
        return depth[name]

    # Wave by wave (every training before any pruning), so that the export, which runs alone, never waits for a
    # training that started late; in a wave, the stages most others wait for first (the sparse model that is pruned).
    stages = sorted(run, key=lambda name: (depth_of(name), -len(_closure(name, downstream)), order.index(name)))
    return Plan(stages, {name: _closure(name, upstream) & run for name in stages}, alone & run)


def workers_for(threads: int | None) -> int:
    """Stages at once: the usable CPUs divided by each stage's threads; one when a stage takes them all (None)."""
    if threads is None:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // threads)


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we may not signal is still a member
        return True
    return True


class Interruptible:
    """Processes, each in a process group of its own, that a SIGINT or SIGTERM to us stops together.

    The first signal is passed on to every group as SIGINT (DVC hands it to the running stage, which ends where it
    is); a group still alive `GRACE_SECONDS` later is terminated, then killed. `received` is the signal, or None.
    """

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen] = []
        self.received: int | None = None
        self._since: float | None = None
        self._escalated: set[int] = set()

    def __enter__(self) -> Interruptible:
        self._previous = {s: signal.signal(s, self._forward) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.end_all()
        finally:
            for s, handler in self._previous.items():
                signal.signal(s, handler)

    def _forward(self, signum: int, _frame: object) -> None:
        if self.received is None:
            print(f"\n{signal.Signals(signum).name}: stopping the running stages...", file=sys.stderr, flush=True)
            self.received, self._since = signum, time.monotonic()
        for process in self.processes:
            _signal_group(process.pid, signal.SIGINT)

    def start(self, cmd: Sequence[str], env: dict[str, str], **popen: object) -> subprocess.Popen:
        process = subprocess.Popen(list(cmd), env=env, start_new_session=True, **popen)
        self.processes.append(process)
        return process

    def escalate(self) -> None:
        """Past the grace period after a signal: SIGTERM to every group still running, SIGKILL 10 s later."""
        if self._since is None:
            return
        waited = time.monotonic() - self._since
        for after, signum in ((GRACE_SECONDS, signal.SIGTERM), (GRACE_SECONDS + 10.0, signal.SIGKILL)):
            if waited > after and signum not in self._escalated:
                self._escalated.add(signum)
                for process in self.processes:
                    if process.poll() is None:
                        _signal_group(process.pid, signum)

    def end_all(self) -> None:
        """Wait for every process; then end what its group left running, so nothing writes after us."""
        for process in self.processes:
            while True:
                try:
                    process.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    self.escalate()
        for process in self.processes:
            if _group_alive(process.pid):
                _signal_group(process.pid, signal.SIGTERM)
                end = time.monotonic() + 10.0
                while _group_alive(process.pid) and time.monotonic() < end:
                    time.sleep(0.1)
                _signal_group(process.pid, signal.SIGKILL)


def run_interruptible(cmd: list[str], env: dict[str, str]) -> tuple[int, int | None]:
    """Run `cmd` in its own process group until it ends; returns (exit code, the signal received or None)."""
    with Interruptible() as group:  # leaving it waits for the process and ends what its group left running
        process = group.start(cmd, env)
    return process.returncode, group.received


def _relay(stage: str, stream, width: int, lock: threading.Lock) -> None:
    """Print a stage's lines as they come, after its name padded to `width`."""
    for line in stream:
        with lock:
            print(f"{stage:<{width}} | {line.rstrip()}", flush=True)


def run_side_by_side(
    pipeline: Plan, workers: int, env: dict[str, str], dvc: str = "dvc"
) -> tuple[str | None, int, int | None]:
    """Run the plan's stages, up to `workers` at once, each when the stages it needs have finished.

    Returns (the stage that failed or None, its exit code, the signal received or None). After a failure no new
    stage starts and the running ones finish (DVC records each that does).
    """
    width = max((len(s) for s in pipeline.stages), default=0)
    lock = threading.Lock()
    waiting, running, done = list(pipeline.stages), {}, set()
    failed: tuple[str | None, int] = (None, 0)
    with Interruptible() as group:
        while waiting or running:
            while (
                group.received is None
                and failed[0] is None
                and len(running) < workers
                and (ready := [s for s in waiting if pipeline.can_start(s, done, set(running))])
            ):
                stage = ready[0]
                waiting.remove(stage)
                with lock:
                    print(f"{stage:<{width}} | started ({len(running) + 1} of {workers} at once)", flush=True)
                cmd = [dvc, "--wait-for-lock", "repro", "--quiet", "--single-item", stage]
                process = group.start(cmd, env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                relay = threading.Thread(target=_relay, args=(stage, process.stdout, width, lock), daemon=True)
                relay.start()
                running[stage] = (process, relay, time.monotonic())
            if not running:
                break  # nothing can start: interrupted, or a failure left the rest waiting
            time.sleep(0.2)
            group.escalate()
            for stage, (process, relay, started) in list(running.items()):
                if process.poll() is None:
                    continue
                relay.join()
                del running[stage]
                seconds = time.monotonic() - started
                with lock:
                    print(f"{stage:<{width}} | finished in {seconds:.0f} s (exit {process.returncode})", flush=True)
                if process.returncode == 0:
                    done.add(stage)
                elif failed[0] is None and group.received is None:
                    failed = (stage, process.returncode)
    return failed[0], failed[1], group.received
