"""The venv's bytecode, compiled where it is needed: `make demo` compiles the files the pipeline imports, `make test`
all of them.

Installing the packages takes 2 s here; compiling all 17,900 of their Python files takes 15 s more on 2 cores, and
the demo's processes import 5,300 of them. Where PYTHONDONTWRITEBYTECODE is set (it is here and in CI), Python
never writes a .pyc on import, so whatever the set-up leaves uncompiled is compiled again by every process that
imports it; where it is not set, the first process to import a file compiles it, on one core, in the middle of a
stage. So the set-up compiles, on every core, the files listed in `pipeline_imports.txt` (paths relative to
site-packages) before the demo, and the rest before the tests. A file missing from the list costs only speed: it is
compiled where it is imported, as without this.

The list is what a demo on a fresh clone imported, recorded with Python's own bytecode redirect:

    make setup && rm -rf /tmp/pyc
    env -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX=/tmp/pyc .venv/bin/python -m netslim.demo
    .venv/bin/python -m netslim.tools.bytecode record /tmp/pyc > src/netslim/tools/pipeline_imports.txt

(then `git checkout .` puts the committed results back). tests/test_bytecode.py checks that the list still covers
what a training stage imports, so an upgrade that moves the packages' files says so.
"""

from __future__ import annotations

import argparse
import compileall
import os
import sys
import sysconfig
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

PIPELINE_IMPORTS = Path(__file__).with_name("pipeline_imports.txt")
SITE_PACKAGES = "site-packages"


def site_packages() -> Path:
    """This interpreter's (the venv's) site-packages."""
    return Path(sysconfig.get_paths()["purelib"])


def listed_files(listing: Path, root: Path) -> list[Path]:
    """The files `listing` names under `root`, one relative path a line; a name the installed packages no longer
    have is left out (the list was recorded with other versions)."""
    names = (line.strip() for line in listing.read_text().splitlines())
    return [root / name for name in names if name and not name.startswith("#") and (root / name).is_file()]


def all_files(root: Path) -> list[Path]:
    """Every Python source file under `root`."""
    return sorted(root.rglob("*.py"))


def _compile(path: str) -> bool:
    # quiet=2: a file Python cannot compile (templates, files for other versions) is skipped silently, as pip's and
    # uv's installers do; an up-to-date .pyc is left as it is.
    return bool(compileall.compile_file(path, quiet=2))


def compile_files(files: Iterable[Path], workers: int | None = None) -> tuple[int, int]:
    """Compiles `files` to their __pycache__ .pyc on `workers` processes (default: every usable CPU); returns how
    many compiled (or were already up to date) and how many could not be."""
    paths = [str(path) for path in files]
    if not paths:
        return 0, 0
    workers = workers or len(os.sched_getaffinity(0))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(_compile, paths, chunksize=max(1, len(paths) // (8 * workers))))
    return sum(results), len(results) - sum(results)


def record(prefix: Path) -> list[str]:
    """The site-packages files a run under PYTHONPYCACHEPREFIX=`prefix` imported, relative to site-packages.

    Python mirrors each source file's absolute directory under the prefix and names the .pyc
    `<module>.<implementation>.pyc`, so the source path is the .pyc's, prefix and tag removed."""
    found = set()
    for pyc in prefix.rglob("*.pyc"):
        parts = pyc.relative_to(prefix).parts
        if SITE_PACKAGES not in parts:
            continue  # the standard library and src/ (netslim itself)
        inner = parts[len(parts) - parts[::-1].index(SITE_PACKAGES) :]
        module = inner[-1].split(".")[0]
        found.add("/".join([*inner[:-1], module + ".py"]))
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netslim.tools.bytecode", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    compile_ = sub.add_parser("compile", help="compile the pipeline's files (default) or --all of site-packages")
    compile_.add_argument("--all", action="store_true", help="every file, not only the listed ones")
    compile_.add_argument("--list", type=Path, default=PIPELINE_IMPORTS, help="relative paths, one a line")
    record_ = sub.add_parser("record", help="print the site-packages files a run under PYTHONPYCACHEPREFIX imported")
    record_.add_argument("prefix", type=Path)
    args = parser.parse_args(argv)

    if args.command == "record":
        if not args.prefix.is_dir():
            print(
                f"error: {args.prefix}: no such folder; run the demo with PYTHONPYCACHEPREFIX={args.prefix}",
                file=sys.stderr,
            )
            return 2
        print("\n".join(record(args.prefix)))
        return 0
    root = site_packages()
    if not args.all and not args.list.is_file():
        print(f"error: --list {args.list}: no such file; name a list of paths under {root}", file=sys.stderr)
        return 2
    files = all_files(root) if args.all else listed_files(args.list, root)
    compiled, skipped = compile_files(files)
    what = "site-packages' files" if args.all else "files the pipeline imports"
    print(f"bytecode: {compiled} {what} compiled or up to date ({skipped} that Python cannot compile skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
