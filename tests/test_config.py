"""params.yaml is read into typed dataclasses and every bad value is refused with the key named."""

import pytest

from conftest import committed_params, committed_text, seed_params
from netslim.config import ConfigError, config_from_dict, lambda_label, load_config


def test_the_committed_params_file_is_the_embedded_offline_run(tmp_path):
    c = load_config(committed_params(tmp_path))
    assert (c.data.dataset, c.data.download, c.model.arch, c.model.width) == ("fashion-mnist", False, "resnet50", 0.25)
    assert c.prune.lambda_ in c.train.lambdas and c.prune.ratios == (0.5, 0.9)
    assert c.search.lambda_min <= c.search.lambda_max and c.search.lambda_min <= float(c.prune.lambda_)
    assert c.search.lambda_max >= float(c.prune.lambda_), "the search's λ range covers the λ the run prunes"


def test_the_seed_profile_turns_params_yaml_into_the_seed_experiment(tmp_path):
    c = load_config(seed_params(tmp_path))
    assert (c.data.dataset, c.model.arch, c.model.width, c.data.image_size) == ("cifar10", "resnet50", 1.0, 32)
    assert c.train.lambdas == ("1e-4", "1e-5", "0") and (c.train.epochs, c.finetune.epochs) == (40, 20)
    assert c.prune.ratios == (0.5, 0.9) and c.prune.lambda_ == "1e-4"
    assert (c.constraints.min_accuracy, c.constraints.max_params) == (0.90, 4_000_000)
    assert c.search.lambda_min < 1e-4 < c.search.lambda_max


def test_a_vgg_run_needs_one_changed_key(tmp_path):
    assert load_config(committed_params(tmp_path), {"model.arch": "vgg19"}).model.arch == "vgg19"


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"train": {"epochs": 0}}, "train.epochs: 0"),
        ({"train": {"lr": -1.0}}, "train.lr: -1.0"),
        ({"train": {"lambdas": ["-1e-4"]}}, "train.lambdas[0]"),
        ({"train": {"lambdas": ["0.0001"]}}, '"1e-4"'),
        ({"prune": {"ratios": [1.0]}}, "outside [0, 1)"),
        ({"prune": {"min_channels": 0}}, "prune.min_channels: 0"),
        ({"prune": {"lambda": "1e-3"}}, "not among train.lambdas"),
        ({"prune": {"ratios": ["budget"]}}, "target_params"),
        ({"prune": {"round_to": 0}}, "prune.round_to: 0"),
        ({"prune": {"target_latency_ms": -2.0}}, "prune.target_latency_ms: -2.0"),
        ({"export": {"threads": 0}}, "export.threads: 0"),
        ({"runtime": {"threads": 0}}, "runtime.threads: 0"),
        ({"export": {"batch_sizes": [1, 0]}}, "export.batch_sizes: 0"),
        ({"export": {"atol": 0.0}}, "export.atol: 0.0"),
        ({"export": {"compare_round_to": 1}}, "export.compare_round_to: 1"),
        ({"export": {"pad_to": 0}}, "export.pad_to: 0"),
        ({"model": {"arch": "resnet18"}}, "model.arch: 'resnet18'"),
        ({"data": {"dataset": "mnist"}}, "data.dataset: 'mnist'"),
        ({"data": {"image_size": 64}}, "data.image_size: 64 must be in 8..32"),
        ({"data": {"image_size": 4}}, "data.image_size: 4 must be in 8..32"),
        ({"tracking": {"model_stages": ["export"]}}, "tracking.model_stages: 'export' has no model to log"),
        ({"finetune": {"milestones": [0.5, 1.5]}}, "past the last epoch"),
        ({"train": {"schedule": "onecycle"}}, "train.schedule: 'onecycle' is not one of step, cosine"),
        ({"constraints": {"min_accuracy": 1.5}}, "constraints.min_accuracy"),
        ({"train": {"epochs": "ten"}}, "must be a whole number"),
        ({"train": {"epoch": 3}}, "train.epoch: unknown key"),
        ({"trian": {}}, "trian: unknown section"),
        ({"data": {"download": "yes"}}, "must be true or false"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(raw, needle):
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_a_latency_target_alone_is_a_budget():
    config = config_from_dict({"prune": {"ratios": [0.5, "budget"], "target_latency_ms": 2.5}})
    assert config.prune.target_latency_ms == 2.5 and config.prune.target_params is None


def test_lambda_labels_are_canonical():
    assert [lambda_label(v) for v in (1e-4, 1e-5, 0, 3.2e-5, "1e-4")] == ["1e-4", "1e-5", "0", "3.2e-5", "1e-4"]


def test_missing_or_broken_params_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [epochs: 1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_flat_dict_has_every_key_once():
    flat = config_from_dict({}).to_flat_dict()
    assert flat["prune.lambda"] == "1e-4" and flat["train.lambdas"] == ["1e-4", "1e-5", "0"]


def test_an_unquoted_lambda_is_refused_because_dvc_would_read_it_as_another_number(tmp_path):
    # DVC (YAML 1.2) reads a bare 1e-4 as 0.0001, so its `${item}` folder would not be ours: refuse early.
    text = committed_text("params.yaml").replace('lambdas: ["1e-2", "3e-3", "0"]', "lambdas: [1e-2, 3e-3, 0]")
    assert "lambdas: [1e-2, 3e-3, 0]" in text
    unquoted = tmp_path / "params.yaml"
    unquoted.write_text(text)
    with pytest.raises(ConfigError, match=r'train\.lambdas\[0\]: .0\.01. must be written as the quoted label "1e-2"'):
        load_config(unquoted)


def test_runtime_threads_sizes_the_torch_of_the_stage_process(tmp_path):
    """`netslim <stage>` sets OMP_NUM_THREADS from runtime.threads before the stage imports torch."""
    import subprocess
    import sys

    params = committed_params(tmp_path)
    code = (
        "import sys; from netslim import cli; from netslim.config import load_config; "
        "cli.use_threads(load_config(sys.argv[1]).runtime.threads); import torch; print(torch.get_num_threads())"
    )
    done = subprocess.run([sys.executable, "-c", code, str(params)], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str(load_config(params).runtime.threads) == "1"
