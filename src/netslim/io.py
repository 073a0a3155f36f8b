"""Atomic file writes, stage outputs committed as a unit, stage locks, and safe checkpoint reads.

Every file the pipeline writes goes through `atomic_path`: the bytes land in a temp file in the same
folder, are fsync'ed, then renamed over the target. A kill at any moment leaves the old file or the new
one, never a torn one. A stage writes its whole set of outputs through `stage_outputs`: into a staging
folder outside its DVC outputs first, then moved into place together, under a lock that a second run of
the same stage finds taken. Every checkpoint is read by `load_checkpoint` with `weights_only=True`.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import math
import os
import pickle
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from netslim.digest import file_sha256 as file_sha256  # where the stages and models have always found it
from netslim.vocabulary import VAL_ACC

_UMASK = os.umask(0)
os.umask(_UMASK)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and what to do."""


class StageBusy(RuntimeError):
    """Another process holds the lock of the same stage's outputs."""


class MetricsError(ValueError):
    """A metric that is not a finite number of sane size; the message names the file and the key."""


def describe_os_error(error: OSError) -> str:
    """One line for a failed read or write: the path, what went wrong and the fix."""
    path = error.filename if error.filename is not None else "<unknown file>"
    # netslim's own checks say more than the system's text (how much space is needed and free)
    detail = f" ({error.strerror})" if error.strerror and error.strerror != os.strerror(error.errno or 0) else ""
    fixes = {
        errno.ENOSPC: f"no space left on device: {path}{detail}; free some space on that disk (or point paths.* "
        "elsewhere) and rerun",
        errno.EDQUOT: f"no space left on device: {path} (disk quota exceeded); free some space and rerun",
        errno.EROFS: f"{path}: read-only file system; point paths.* at a writable folder",
        errno.EACCES: f"{path}: permission denied; make it writable (chmod u+w) or point paths.* elsewhere",
        errno.EPERM: f"{path}: operation not permitted; make it writable or point paths.* elsewhere",
        errno.EISDIR: f"{path}: is a folder where a file is expected; remove or rename that folder",
        errno.ENOTDIR: f"{path}: a part of this path is a file where a folder is expected; remove or rename it",
        errno.EEXIST: f"{path}: a file is in the way where a folder is expected; remove or rename it",
        errno.ENOENT: f"{path}: no such file or folder, and it cannot be created there; check paths.*",
        errno.ENAMETOOLONG: f"{path}: the name is too long for the file system; use a shorter path",
    }
    return fixes.get(error.errno, f"{path}: {error.strerror or error}")


def _with_filename(error: OSError, path: Path) -> OSError:
    """`error` naming `path` when it names no file (a write() or flush() failure names none)."""
    if error.filename is not None:
        return error
    return OSError(error.errno, error.strerror or str(error), str(path))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temp path beside `path`; on success it is renamed over `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except OSError as e:
        tmp_path.unlink(missing_ok=True)
        raise _with_filename(e, path) from e
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    torch = sys.modules.get("torch")  # a tensor exists only where torch was imported
    if torch is not None and isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Rows of dicts to CSV; the header is the union of keys in first-seen order."""
    header: list[str] = []
    for row in rows:
        header.extend(k for k in row if k not in header)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def save_torch(path: str | Path, obj: Any) -> None:
    import torch  # here, not at the top: `make demo` and the small CLIs import this module without needing torch

    # Through a Python file: a full disk then raises OSError(ENOSPC), where torch's own writer raises an opaque
    # RuntimeError ("basic_ios::clear: iostream error", "unexpected pos").
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as e:  # the zip writer's own error at exit hides the OSError that stopped the write
            cause = e.__context__
            if isinstance(cause, OSError):
                raise cause from None
            raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """torch.load with weights_only=True; any failure becomes a CheckpointError naming the file.

    weights_only=True restricts unpickling to tensors and plain containers, so a file crafted to run
    code when unpickled is refused before any of its code runs.
    """
    import torch

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder where a checkpoint file is expected; remove or rename it")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; run the stage that writes it (e.g. `dvc repro`)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = _unpickling_reason(e)
        raise CheckpointError(f"{path}: refused to load: {reason}; only load checkpoints netslim wrote") from None
    except Exception as e:  # noqa: BLE001 - arbitrary bytes fail in many ways (zip, EOF, KeyError, struct, ...)
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(e).__name__}: {_first_sentence(e)}); "
            "it may be truncated or corrupt: delete it and rerun the stage that writes it"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a netslim checkpoint dict")
    return obj


def _first_sentence(error: BaseException, limit: int = 120) -> str:
    text = " ".join(str(error).split())
    return text.split(". ")[0][:limit] or "the file ends too early"


def _unpickling_reason(error: pickle.UnpicklingError) -> str:
    """What weights_only refused, without torch's advice to retry with weights_only=False."""
    text = str(error)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"it asks to import {found.group(1)}, which is neither a tensor nor plain data and could run code"
    found = re.search(r"Unsupported operand \S+|Unsupported class \S+", text)
    detail = found.group(0) if found else _first_sentence(error)
    return f"its pickle data is not what torch.save writes for tensors and plain data ({detail})"


# ---- metrics ----------------------------------------------------------------------------------

METRIC_LIMIT = 1e15  # no count, ratio, accuracy or time netslim measures comes near: larger means a broken file
# NaN where nothing was measured: the validation accuracies of a run without a validation split (data.val_size: 0)
NOT_MEASURED = frozenset({VAL_ACC})


def check_metrics(metrics: Mapping[str, Any], source: str | Path) -> None:
    """MetricsError unless every value (nested mappings and lists walked) is a bool, null, or a finite number
    within ±METRIC_LIMIT; NaN only under the NOT_MEASURED keys. Called on metrics before they are written and by
    every reader of them (the report, the PR diff), so a NaN or a string never reaches a table as a number."""
    for key, value in _leaves(metrics, ""):
        if value is None or isinstance(value, bool) or is_sane_number(value):
            continue
        if not isinstance(value, int | float):
            problem = f"{value!r:.40} is not a number"
        elif isinstance(value, float) and math.isnan(value):
            if key.rpartition(".")[2] in NOT_MEASURED:
                continue
            problem = "is NaN"
        else:
            shown = f"{value:.4g}" if isinstance(value, float) else f"a {len(str(abs(value)))}-digit number"
            problem = f"{shown} is not a finite number of sane size (|value| <= {METRIC_LIMIT:g})"
        raise MetricsError(f"{source}: {key} {problem}; rerun the stage that writes it (`dvc repro`)")


def is_sane_number(value: Any) -> bool:
    """A finite int or float (not a bool) within ±METRIC_LIMIT: what a metric value may be."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return abs(value) <= METRIC_LIMIT if isinstance(value, int) else math.isfinite(value) and abs(value) <= METRIC_LIMIT


def _leaves(tree: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(tree, list | tuple):
        for i, value in enumerate(tree):
            yield from _leaves(value, f"{prefix}[{i}]")
    else:
        yield prefix, tree


def write_metrics(path: str | Path, metrics: Mapping[str, Any]) -> None:
    """A stage's metrics file, refused (MetricsError naming the key) if a value is not a finite number."""
    check_metrics(metrics, path)
    write_json(path, metrics)


# ---- stage outputs: checked before the work, written to staging, committed as a unit ----------------------------

COMMIT_JOURNAL = "commit.json"


def require_space(needs: Mapping[str | Path, int]) -> None:
    """OSError(ENOSPC) naming the first folder whose file system has less free space than it needs (bytes)."""
    for folder, nbytes in needs.items():
        stat = os.statvfs(folder)
        free = stat.f_bavail * stat.f_frsize
        if free < nbytes:
            raise OSError(
                errno.ENOSPC,
                f"needs about {nbytes / 1e6:.1f} MB, {free / 1e6:.1f} MB free",
                str(folder),
            )


def _writable_folder(folder: Path) -> Path:
    """The folder itself, or its nearest existing ancestor (where it will be created), checked and returned; an
    OSError naming it when this process cannot write there: permissions, a read-only file system (access(2) reports
    EROFS for root too) or a file in the way. Creates nothing."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OSError(errno.ENOTDIR, "not a folder", str(existing))
    if not os.access(existing, os.W_OK | os.X_OK):
        code = errno.EROFS if os.statvfs(existing).f_flag & os.ST_RDONLY else errno.EACCES
        raise OSError(code, os.strerror(code), str(existing))
    return existing


class StageOutputs:
    """The files one stage run writes, written to `staging` and moved over their targets by `commit`."""

    def __init__(self, staging: Path, targets: list[Path]) -> None:
        self.staging, self.targets = staging, targets

    def path(self, target: str | Path) -> Path:
        """Where to write `target` now: a file of the same name in the staging folder, beside the staged files of
        the same target folder (so a function that writes a whole folder can be handed its staged folder)."""
        if Path(target) not in self.targets:
            raise ValueError(f"{target}: not an output the stage declared")  # a bug
        folders = list(dict.fromkeys(t.parent for t in self.targets))
        return self.staging / str(folders.index(Path(target).parent)) / Path(target).name

    def commit(self) -> None:
        """Every declared file must have been written; then all of them replace their targets.

        A journal written before the first move lets the next run of the stage finish the moves, should this
        process die among them (`_finish_commit`), so the targets end as the old set or the new one.
        """
        moves = []
        for target in self.targets:
            staged = self.path(target)
            if not staged.is_file():
                raise RuntimeError(f"{target}: the stage declared this output but did not write it")  # a bug
            target.parent.mkdir(parents=True, exist_ok=True)
            moves.append((self._beside_if_other_device(staged, target), target))
        write_json(self.staging / COMMIT_JOURNAL, [[os.path.abspath(a), os.path.abspath(b)] for a, b in moves])
        _finish_commit(self.staging)

    @staticmethod
    def _beside_if_other_device(staged: Path, target: Path) -> Path:
        """`staged`, or a copy of it beside `target` when the two are on different file systems (a rename cannot
        cross them). All copies are made before any target is replaced, so a full disk there changes nothing."""
        if os.stat(staged).st_dev == os.stat(target.parent).st_dev:
            return staged
        beside = target.with_name(f".{target.name}.staged")
        with atomic_path(beside) as tmp:
            shutil.copyfile(staged, tmp)
        return beside


def _finish_commit(staging: Path) -> None:
    """Move every file the journal lists over its target, then remove the staging folder."""
    for source, target in json.loads((staging / COMMIT_JOURNAL).read_text()):
        if Path(source).exists():  # moved already when an earlier commit was interrupted after it
            os.replace(source, target)
    _fsync_folders({Path(target).parent for _, target in json.loads((staging / COMMIT_JOURNAL).read_text())})
    shutil.rmtree(staging)


def _fsync_folders(folders: Iterable[Path]) -> None:
    """Make the renames durable: a rename is an update of the folder, which is flushed on its own."""
    for folder in folders:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def stage_lock(path: Path, what: str) -> Iterator[None]:
    """Hold `path` locked (flock) while the block runs; StageBusy when another process holds it.

    The kernel drops the lock when its holder dies, even by SIGKILL, so a crash never leaves a stale lock. The
    file stays (deleting it would let a third process lock a new file while the second holds the old one).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise StageBusy(
                f"{path}: another `netslim {what}` (pid {holder}) is writing the same outputs; wait for it to "
                "finish or stop it, then rerun"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def stage_outputs(
    work: Path, what: str, targets: Iterable[str | Path], needs_bytes: int = 0, enabled: bool = True
) -> Iterator[StageOutputs]:
    """The outputs of one stage run, written as a unit; call `commit()` once all of them are written.

    Before the block runs (so before any training): the stage's lock `<work>.lock` is taken (StageBusy if another
    run of the same stage holds it), a commit that a killed run left half done is finished, every target folder
    is created and must be writable, and the staging folder's disk must have `needs_bytes` free (OSError naming
    the folder otherwise). If the block raises, or ends without `commit()`, the staging folder is removed and the
    targets are left exactly as they were.

    Args:
        work: `<work>.lock` is the lock, `<work>.staging/` the staging folder (outside the DVC outputs, beside
            the resume states: paths.state).
        what: the stage and its argument as the user runs it, e.g. "train --lambda 1e-4", for the busy message.
        enabled: False on the ranks of a distributed run other than 0, which write nothing.
    """
    targets = [Path(t) for t in targets]
    staging = work.with_name(f"{work.name}.staging")
    if not enabled:
        yield StageOutputs(staging, targets)
        return
    with stage_lock(work.with_name(f"{work.name}.lock"), what):
        if (staging / COMMIT_JOURNAL).is_file():
            print(f"note: finishing the outputs commit of an interrupted `netslim {what}`", file=sys.stderr)
            _finish_commit(staging)
        for target in targets:
            if target.is_dir():
                raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), str(target))
        folders = [_writable_folder(folder) for folder in dict.fromkeys(t.parent for t in targets)]
        for folder in folders:
            for leftover in folder.glob(".*.staged"):  # copies of an interrupted commit across file systems
                leftover.unlink()
        shutil.rmtree(staging, ignore_errors=True)
        _writable_folder(staging)
        for index in range(len(folders)):
            (staging / str(index)).mkdir(parents=True)
        # Each file system that receives the files: the staging folder's, and a target folder's on another one.
        by_device = {os.stat(folder).st_dev: folder for folder in (*folders, staging)}
        require_space({folder: needs_bytes for folder in by_device.values()})
        outputs = StageOutputs(staging, targets)
        try:
            yield outputs
        finally:
            if staging.exists() and not (staging / COMMIT_JOURNAL).is_file():
                shutil.rmtree(staging, ignore_errors=True)
