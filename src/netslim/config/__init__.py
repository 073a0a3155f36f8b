"""One typed config, read from params.yaml and validated once, before any work.

Every section of params.yaml is a frozen dataclass (schema). `load_config` (loading) rejects unknown keys, wrong types
and, through `validate` (validation), out-of-range values with a `ConfigError` whose message is one line naming the
key, the bad value and what is allowed; the CLI turns it into exit code 2 before anything is written. λ and ratio
labels, which name the pipeline's files, are parsed and written by labels.
"""

from netslim.config.labels import lambda_label, parse_lambda, parse_ratio, ratio_label
from netslim.config.loading import config_from_dict, load_config, read_yaml, section_from_dict
from netslim.config.schema import (
    DATASETS,
    MAX_CLASSES,
    MAX_LR,
    MAX_SEED,
    MAX_WIDTH,
    MODEL_STAGES,
    SCHEDULES,
    TEACHERS,
    Config,
    ConfigError,
    ConstraintsConfig,
    DataConfig,
    ExperimentConfig,
    ExportConfig,
    FinetuneConfig,
    ModelConfig,
    OptimConfig,
    PathsConfig,
    PruneConfig,
    RuntimeConfig,
    SearchConfig,
    TrackingConfig,
    TrainConfig,
    milestone_epochs,
)
from netslim.config.validation import validate

__all__ = [
    "DATASETS",
    "MAX_CLASSES",
    "MAX_LR",
    "MAX_SEED",
    "MAX_WIDTH",
    "MODEL_STAGES",
    "SCHEDULES",
    "TEACHERS",
    "Config",
    "ConfigError",
    "ConstraintsConfig",
    "DataConfig",
    "ExperimentConfig",
    "ExportConfig",
    "FinetuneConfig",
    "ModelConfig",
    "OptimConfig",
    "PathsConfig",
    "PruneConfig",
    "RuntimeConfig",
    "SearchConfig",
    "TrackingConfig",
    "TrainConfig",
    "config_from_dict",
    "lambda_label",
    "load_config",
    "milestone_epochs",
    "parse_lambda",
    "parse_ratio",
    "ratio_label",
    "read_yaml",
    "section_from_dict",
    "validate",
]
