"""`netslim prepare`: raw dataset -> data/prepared/{train,val,test}.pt (uint8 tensors) + meta.json."""

from __future__ import annotations

import argparse

from netslim import tracking
from netslim.config import Config
from netslim.data import SPLITS, read_and_split, write_prepared
from netslim.io import stage_outputs
from netslim.layout import Layout


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # everything comes from params.yaml


def run(args: argparse.Namespace, config: Config) -> int:
    layout = Layout(config.paths)
    # meta.json last: a commit interrupted among its moves (finished by the next run) never shows new meta, old splits
    files = [*(layout.prepared / f"{split}.pt" for split in SPLITS), layout.prepared / "meta.json"]
    splits, meta = read_and_split(config.data, config.experiment.seed, config.paths.raw)  # a bad file stops here
    with (
        stage_outputs(layout.work("prepare", config.data.dataset), "prepare", files) as outputs,
        tracking.stage_run(config, "prepare", f"prepare {config.data.dataset}") as run,
    ):
        write_prepared(outputs.path(layout.prepared / "meta.json").parent, splits, meta)  # the whole staged folder
        outputs.commit()
        sizes = {f"{split}_images": n for split, n in meta["sizes"].items()}
        run.metrics(sizes, headline=tuple(sizes))
    sizes = ", ".join(f"{k} {v}" for k, v in meta["sizes"].items())
    print(f"prepared {config.data.dataset} into {layout.prepared}: {sizes}")
    return 0
