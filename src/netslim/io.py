"""Atomic file writes and safe checkpoint reads.

Every file the pipeline writes goes through `atomic_write`: the bytes land in a temp file in the same
folder, are fsync'ed, then renamed over the target. A kill at any moment leaves the old file or the new
one, never a torn one. Every checkpoint is read by `load_checkpoint` with `weights_only=True`.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import pickle
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and what to do."""


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

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """torch.load with weights_only=True; any failure becomes a CheckpointError naming the file.

    weights_only=True restricts unpickling to tensors and plain containers, so a file crafted to run
    code when unpickled is refused before any of its code runs.
    """
    import torch

    path = Path(path)
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
