"""A stage server for `make demo`: one process that has imported torch, MLflow and the stages forks a process for
each stage, so a stage starts working without paying for its imports again.

DVC runs every stage as a process of its own (`netslim <stage>`), and each paid about 3 s of imports before its first
line of work here (torch 0.9 s, MLflow and its SQL store 1.8 s, the compiler module an optimizer imports 0.8 s): ten
stages a demo, seven of them side by side on two cores. The demo starts this server beside its first stage and hands
its address to the stages in NETSLIM_STAGE_SERVER. `netslim <stage>` (its console script is `entry` below) then sends
the server its arguments, working directory and environment and, as file descriptors (SCM_RIGHTS), its stdin, stdout
and stderr; the server forks, and the child runs the stage exactly as `netslim` would have, writing to the stage's
own output. `netslim` waits, passes SIGINT and SIGTERM on to the child and exits as the child did (128 + the signal
that ended it). Where no server answers, `netslim` runs the stage itself: outside the demo, and whenever the server
is not up.

Forking is safe because the server does nothing but import: when it forks it has one thread (it checks, and stops if
an import started another; jemalloc's background thread aside, see FORK_SAFE_THREADS), no OpenMP pool (torch starts
one at its first parallel kernel, in the child, sized by runtime.threads), no CUDA context and no open database. The
child takes the stage's environment and working directory before any stage code runs; what a module read from the
environment as it was imported is the demo's, which the stage's only extends (DVC adds its own variables).
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import traceback
from pathlib import Path

SERVER_ENV = "NETSLIM_STAGE_SERVER"
# What the stages import before and while they work (tests/test_stage_server.py checks a stage imports little more).
PRELOAD = (
    "torch",
    "torch._dynamo",  # an optimizer's first step imports it
    "netslim.stages.prepare",
    "netslim.stages.train",
    "netslim.stages.prune",
    "netslim.stages.finetune",
    "netslim.stages.report",
    "netslim.tracking.run",
    "mlflow",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "mlflow.pytorch",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
    "torch.onnx",
    "onnxscript",
)  # not onnxruntime (nor the export stage, which imports it): importing it starts a thread of its own
# Threads the server may hold when it forks: jemalloc's background thread (pyarrow's allocator, which pandas and
# MLflow import) is made safe by jemalloc's own fork handlers; the child starts without it, as after any fork.
FORK_SAFE_THREADS = {"jemalloc_bg_thd"}
_HEADER = struct.Struct("!I")  # the request's length


# ---- the client: `netslim <stage>` ----


def _send_request(sock: socket.socket, argv: list[str]) -> None:
    request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    socket.send_fds(sock, [_HEADER.pack(len(request)) + request], [0, 1, 2])


def _read_message(stream) -> dict | None:
    line = stream.readline()
    return json.loads(line) if line else None


def run_in_server(argv: list[str]) -> int | None:
    """Runs `netslim argv` in the server named by NETSLIM_STAGE_SERVER and returns its exit code; None where no
    server answers before the stage starts (the caller then runs the stage itself)."""
    address = os.environ.get(SERVER_ENV)
    if not address:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    pending: list[int] = []
    worker: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if worker:
            try:
                os.kill(worker[0], signum)
            except ProcessLookupError:
                pass
        else:
            pending.append(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            sock.connect(address)
            _send_request(sock, argv)
            stream = sock.makefile("r")
            started = _read_message(stream)
        except OSError:
            started = None
        if started is None:  # no server, or it stopped before the stage began
            if pending:  # and the stage was interrupted before it began: it is not run at all
                print(
                    f"error: interrupted by {signal.Signals(pending[0]).name} before `netslim` started", file=sys.stderr
                )
                return 128 + pending[0]
            return None
        worker.append(started["pid"])
        for signum in pending:
            forward(signum, None)
        ended = _read_message(stream)
        if ended is None:  # the server went away while the stage ran: the stage goes with it
            forward(signal.SIGTERM, None)
            print(
                f"error: the stage server stopped while `netslim {' '.join(argv)}` ran: rerun it (or `dvc repro`)",
                file=sys.stderr,
            )
            return 1
        return int(ended["exit"])
    finally:
        sock.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def entry() -> None:
    """The `netslim` program: the stage runs in the demo's stage server where one answers, else in this process.

    The console script starts here rather than in netslim.cli, so that no stage's code imports this module: it runs
    stages but computes nothing of theirs, and a change to it must not rerun the pipeline (tests/test_dvc_graph.py)."""
    argv = sys.argv[1:]
    code = run_in_server(argv)
    if code is None:
        from netslim import cli

        cli.entry()
    sys.exit(code)


# ---- the server ----


def _receive_request(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _flags, _address = socket.recv_fds(conn, 1 << 16, 3)
    if len(data) < _HEADER.size or len(fds) != 3:
        raise ConnectionError("not a stage request")
    (size,) = _HEADER.unpack_from(data)
    body = data[_HEADER.size :]
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ConnectionError("request cut short")
        body += chunk
    return json.loads(body), fds


def _run_stage(request: dict, fds: list[int]) -> None:
    """In the forked child: become the stage process the request describes, run it, exit as it would."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    argv = request["argv"]
    sys.argv = ["netslim", *argv]
    try:  # `top` and `ps -o comm` name the stage (15 characters at most), not the server it was forked from
        Path("/proc/self/comm").write_text(" ".join(["netslim", *argv[:1]])[:15])
    except OSError:
        pass
    # stdout as a new process would open it: line-buffered on a terminal, written through with PYTHONUNBUFFERED
    sys.stdout.reconfigure(line_buffering=os.isatty(1), write_through=bool(os.environ.get("PYTHONUNBUFFERED")))
    from netslim import cli

    try:
        code = cli.run(argv)
    except SystemExit as e:  # argparse's usage errors and --help, as the interpreter would end on them
        code = _exit_code(e)
    except BaseException:  # a bug: the traceback and exit 1, as the interpreter would
        traceback.print_exc()
        code = 1
    # the exit of a stage process: non-daemon threads joined, torch's and MLflow's exit handlers, buffered output
    try:
        shutdown = getattr(threading, "_shutdown", None)
        if shutdown is not None:
            shutdown()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def _exit_code(e: SystemExit) -> int:
    if e.code is None or isinstance(e.code, int):
        return e.code or 0
    print(e.code, file=sys.stderr)
    return 1


def _other_threads() -> list[str]:
    """The names of this process's threads besides the main one that forking would not be safe with."""
    if not os.path.isdir("/proc/self/task"):
        return []
    names = [Path(f"/proc/self/task/{task}/comm").read_text().strip() for task in os.listdir("/proc/self/task")]
    names.remove(Path("/proc/self/comm").read_text().strip())
    return [name for name in names if name not in FORK_SAFE_THREADS]


def serve(address: str) -> int:
    """Imports PRELOAD, then listens at `address` and forks a child per request until the process that started it
    ends or it is terminated. A stage that starts before the imports are done finds no server and runs on its own:
    the demo's first stage runs beside the imports instead of waiting for them."""
    parent = os.getppid()
    for module in PRELOAD:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError:
            pass  # a release that moved it: the stages import what they use themselves
        except Exception as e:  # a broken import: the stages import on their own, and say what is wrong
            print(f"stage server: importing {module} failed ({e}); stages run on their own", file=sys.stderr)
            return 1
    if threads := _other_threads():
        names = ", ".join(threads)
        print(f"stage server: the imports started threads ({names}): stages run on their own", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the demo is done: main() removes the socket
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(16)

    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(wake_read, selectors.EVENT_READ, "child")
    children: dict[int, socket.socket] = {}  # the stage's pid -> the connection of the `netslim` waiting for it

    while True:
        for key, _events in selector.select(timeout=1.0):
            if key.data == "accept":
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                try:
                    request, fds = _receive_request(conn)
                except (OSError, ValueError, ConnectionError):
                    conn.close()
                    continue
                sys.stdout.flush()
                sys.stderr.flush()
                try:
                    pid = os.fork()
                except OSError:  # the `netslim` waiting finds the connection closed and runs the stage itself
                    pid = -1
                if pid == 0:
                    try:
                        signal.set_wakeup_fd(-1)
                        for signum, handler in (
                            (signal.SIGCHLD, signal.SIG_DFL),
                            (signal.SIGINT, signal.default_int_handler),
                            (signal.SIGTERM, signal.SIG_DFL),
                        ):
                            signal.signal(signum, handler)
                        selector.close()
                        for fd in (wake_read, wake_write):
                            os.close(fd)
                        listener.close()
                        for other in (conn, *children.values()):
                            other.close()
                        _run_stage(request, fds)  # ends the process
                    finally:  # never back into the server's loop, whatever went wrong before the stage ran
                        traceback.print_exc()
                        os._exit(70)
                for fd in fds:
                    os.close(fd)
                if pid < 0:
                    conn.close()
                    continue
                children[pid] = conn
                try:
                    conn.sendall((json.dumps({"pid": pid}) + "\n").encode())
                except OSError:
                    pass  # its `netslim` is gone: the closed connection stops the stage below
                selector.register(conn, selectors.EVENT_READ, pid)
            elif key.data == "child":
                while True:
                    try:
                        os.read(wake_read, 512)
                    except BlockingIOError:
                        break
            else:  # a waiting `netslim` closed its end: it was killed, so its stage goes too
                pid = key.data
                try:
                    closed = not key.fileobj.recv(1, socket.MSG_PEEK)
                except OSError:
                    closed = True
                if pid in children and closed:
                    selector.unregister(key.fileobj)
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
        _reap(children, selector)
        if os.getppid() != parent:  # the demo is gone
            for pid in children:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:  # ended since _reap
                    pass
            return 0


def _reap(children: dict[int, socket.socket], selector: selectors.BaseSelector) -> None:
    """Tells each finished stage's `netslim` its exit code."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        code = os.waitstatus_to_exitcode(status)  # -N where signal N ended it: a shell's 128 + N
        try:
            conn.sendall((json.dumps({"exit": code if code >= 0 else 128 - code}) + "\n").encode())
        except OSError:
            pass
        try:
            selector.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m netslim.stage_server SOCKET_PATH", file=sys.stderr)
        return 2
    try:
        return serve(argv[0])
    finally:
        Path(argv[0]).unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
