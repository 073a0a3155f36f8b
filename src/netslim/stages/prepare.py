"""`netslim prepare`: raw dataset -> data/prepared/{train,val,test}.pt (uint8 tensors) + meta.json."""

from __future__ import annotations

import argparse

from netslim import tracking
from netslim.config import Config
from netslim.data import prepare
from netslim.layout import Layout


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # everything comes from params.yaml


def run(args: argparse.Namespace, config: Config) -> int:
    layout = Layout(config.paths)
    with tracking.stage_run(config, "prepare", f"prepare {config.data.dataset}") as run:
        meta = prepare(config.data, config.experiment.seed, config.paths.raw, layout.prepared)
        sizes = {f"{split}_images": n for split, n in meta["sizes"].items()}
        run.metrics(sizes, headline=tuple(sizes))
    sizes = ", ".join(f"{k} {v}" for k, v in meta["sizes"].items())
    print(f"prepared {config.data.dataset} into {layout.prepared}: {sizes}")
    return 0
