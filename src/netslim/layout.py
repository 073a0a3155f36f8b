"""Every file location of the pipeline, derived from params.yaml's `paths` in one place.

A module of its own (it imports nothing but the config) so that a stage which only needs paths, like
`prepare` or `report`, does not depend on the training and pruning code in DVC's eyes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from netslim.config import PathsConfig, lambda_label, ratio_label


@dataclass(frozen=True)
class Layout:
    """Where each stage reads and writes; dvc.yaml spells the same paths from the same keys."""

    paths: PathsConfig

    @property
    def prepared(self) -> Path:
        return Path(self.paths.prepared)

    def sparse_dir(self, lam: str | float) -> Path:
        return Path(self.paths.sparse) / lambda_label(lam)

    def sparse_best(self, lam: str | float) -> Path:
        return self.sparse_dir(lam) / "best.pt"

    def train_reports(self, lam: str | float) -> Path:
        return Path(self.paths.train_reports) / lambda_label(lam)

    def pruned(self, ratio: float | str) -> Path:
        return Path(self.paths.pruned) / f"{ratio_label(ratio)}.pt"

    def prune_reports(self, ratio: float | str) -> Path:
        return Path(self.paths.prune_reports) / ratio_label(ratio)

    def finetuned(self, ratio: float | str) -> Path:
        return Path(self.paths.finetuned) / f"{ratio_label(ratio)}.pt"

    def finetune_reports(self, ratio: float | str) -> Path:
        return Path(self.paths.finetune_reports) / ratio_label(ratio)

    def exported(self, name: str) -> Path:
        return Path(self.paths.exported) / f"{name}.onnx"

    @property
    def export_reports(self) -> Path:
        return Path(self.paths.export_reports)

    def state(self, stage: str, label: str) -> Path:
        return Path(self.paths.state) / f"{stage}-{label}.pt"

    def work(self, stage: str, label: str) -> Path:
        """`<this>.lock` and `<this>.staging/` of one stage run (netslim.io.stage_outputs), beside the states."""
        return Path(self.paths.state) / f"{stage}-{label}"

    @property
    def search_cache(self) -> Path:
        return Path(self.paths.search_reports) / "cache"
