"""`netslim bench` and the fast paths it measures: ratios from measured times, honest verdicts, CPU-safe
runtime switches, and (with CUDA) bf16 autocast, channels_last and no per-step host sync."""

from __future__ import annotations

import json
import math
import statistics
import warnings

import pytest
import torch

from conftest import tiny_params, write_params
from netslim.cli import main
from netslim.data import normalize
from netslim.engine import FitSettings, epoch_generator, make_optimizer, train_one_epoch
from netslim.models import build_model
from netslim.tools.bench import (
    BenchSettings,
    figure,
    interleaved,
    seed_style_loader,
    synthetic_data,
)
from netslim.tools.bench_report import judge, render_markdown

CPU = torch.device("cpu")
FIGURES = {
    "epoch_vs_seed_style",
    "step_vs_bare_step",
    "inference_0.5_batch1",
    "inference_0.9_batch1",
    "inference_0.5_batch64",
    "inference_0.9_batch64",
    "tracking_overhead",
}
TINY = ["--arch", "vgg19", "--width", "0.0625", "--images", "64", "--batch-size", "32", "--repeats", "1"]


@pytest.fixture
def project(tmp_path, fmnist_dir, monkeypatch):
    write_params(tmp_path / "params.yaml", tiny_params(tmp_path, fmnist_dir))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow  # about a minute on a busy 2-core machine: 7 figures, a DataLoader with workers, MLflow
def test_bench_writes_both_reports_with_every_ratio_computed_from_its_samples(project, capsys):
    assert main(["bench", *TINY, "--threads", "1", "--out-dir", "out"]) == 0
    result = json.loads((project / "out/benchmarks.json").read_text())
    markdown = (project / "out/benchmarks.md").read_text()
    figures = {f["key"]: f for f in result["figures"]}
    assert set(figures) == FIGURES
    for key, f in figures.items():
        numerator, denominator = f["ratio_of"]
        samples = f["seconds"]
        expected = 5 if key.startswith("inference") else 1
        assert all(len(v) == expected and all(t > 0 for t in v) for v in samples.values()), key
        assert f["ratio"] == statistics.median(samples[numerator]) / statistics.median(samples[denominator])
        assert math.isfinite(f["ratio"]) and f["ratio"] > 0
        if "passed" in f:
            value = f["overhead"] if key == "tracking_overhead" else f["ratio"]
            assert f["passed"] == (value < f["target"] if key == "tracking_overhead" else value >= f["target"])
        assert f["title"] in markdown
    assert figures["tracking_overhead"]["log_seconds_per_epoch"] > 0
    assert figures["inference_0.9_batch64"]["macs_ratio"] > figures["inference_0.5_batch64"]["macs_ratio"] > 1
    assert result["machine"]["threads"] == 1 and result["settings"]["images"] == 64
    for f in figures.values():  # every short figure is explained
        assert f.get("passed") is not False or f"- **{f['title']}**:" in markdown
    assert "wrote out/benchmarks.json" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flag", "value", "named"),
    [("--width", "0", "--width: 0.0"), ("--images", "10", "--images: 10"), ("--arch", "alexnet", "--arch: 'alexnet'")],
)
def test_bad_flags_exit_2_with_one_line_and_write_nothing(project, capsys, flag, value, named):
    args = ["bench", *TINY, "--out-dir", "out"]
    args[args.index(flag) + 1] = value
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {named}") and len(err.splitlines()) == 1
    assert not (project / "out").exists()


def test_interleaved_takes_variants_in_turn_and_skips_warmup():
    calls: list[str] = []
    variants = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = interleaved(variants, CPU, repeats=3, warmup=1)
    assert "".join(calls) == "abc" + "bca" + "cab" + "abc"  # each round starts one later: no fixed predecessor
    assert [len(v) for v in times.values()] == [3, 3, 3] and all(t >= 0 for v in times.values() for t in v)


def _known_result(seed_style: float, tracked: float, pruned_90: float) -> dict:
    samples = {
        "epoch_vs_seed_style": ({"seed_style": [seed_style] * 3, "netslim": [1.0, 1.0, 9.0]}, "seed_style", "netslim"),
        "step_vs_bare_step": ({"bare": [0.95], "trainer": [1.0]}, "bare", "trainer"),
        "inference_0.9_batch64": ({"unpruned": [1.0], "pruned_0.9": [pruned_90]}, "unpruned", "pruned_0.9"),
        "tracking_overhead": ({"netslim_tracked": [tracked], "netslim": [1.0]}, "netslim_tracked", "netslim"),
    }
    figures = [figure(key, key, *args) for key, args in samples.items()]
    figures[0]["steps_per_epoch"] = 10
    figures[1] |= {"bare_step_seconds": 0.095, "trainer_step_seconds": 0.1}
    figures[2] |= {"prune_ratio": 0.9, "macs_ratio": 10.0, "images_per_sample": 64}
    figures[2]["macs"] = {"unpruned": 10_000_000, "pruned_0.9": 1_000_000}
    figures[3] |= {"overhead": tracked - 1, "log_seconds_per_epoch": 0.01, "run_start_seconds": 2.0}
    judge(figures)
    machine = {"device": "cpu", "device_name": "CPU", "threads": 2, "torch": "x", "load_before": 0.0, "load_after": 0.0}
    settings = {"arch": "vgg19", "width": 0.25, "images": 640, "batch_size": 64, "repeats": 3, "workers": 2}
    return {"figures": figures, "machine": machine, "settings": settings, "params": 1, "seconds": 1.0}


def test_verdicts_follow_the_targets_and_short_figures_say_why():
    good = _known_result(seed_style=1.5, tracked=1.02, pruned_90=0.15)
    assert [f["passed"] for f in good["figures"]] == [True, True, True, True]
    assert good["figures"][0]["ratio"] == 1.5  # a ratio of medians: the 9.0 outlier does not count
    assert "Every figure meets its target." in render_markdown(good)
    assert "Logging an epoch's metrics took 10 ms (1.00% of an epoch)" in render_markdown(good)

    bad = _known_result(seed_style=1.2, tracked=1.05, pruned_90=0.25)
    assert [f["passed"] for f in bad["figures"]] == [False, True, False, False]
    text = render_markdown(bad)
    assert text.count("**short**") == 3
    # Each explanation quotes this run's own numbers: the epochs and the trainer's share of the bare step ...
    assert "took 1.20 s, only 0.20 s (20%) more than netslim's 1.00 s" in text and "at 0.95x the bare" in text
    # ... the GMAC/s the pruned and unpruned models reached, and the directly timed logging cost.
    assert "0.26 GMAC/s" in text and "0.64 GMAC/s" in text
    assert "logging itself took 10 ms an epoch" in text and "run-to-run noise" in text
    assert "spread by up to 800%" in text  # the 9.0 s outlier among the 1.0 s netslim epochs


def test_the_seed_style_loader_takes_as_many_steps_and_feeds_the_same_numbers():
    data = synthetic_data(70, 10, seed=0)
    loader = seed_style_loader(data, BenchSettings(images=70, batch_size=32, workers=0), CPU)
    batches = list(loader)
    assert len(batches) == 70 // 32 and all(x.shape == (32, 3, 32, 32) and x.dtype == torch.float32 for x, _ in batches)
    # Without the random crop and flip, the PIL recipe's ToTensor + Normalize equals netslim's normalize.
    from torchvision import transforms

    plain = transforms.Compose([transforms.ToTensor(), transforms.Normalize(data.mean, data.std)])
    theirs = torch.stack([plain(img.numpy()) for img in data.train.images[:8]])
    assert torch.allclose(theirs, normalize(data.train.images[:8], data.mean, data.std), atol=1e-5)


def _conv_output_dtypes(model: torch.nn.Module) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


def _one_epoch(device: torch.device, steps: int, **settings) -> tuple[torch.nn.Module, float]:
    torch.manual_seed(0)
    model = build_model("resnet50", 4, width=0.0625).to(device)
    s = FitSettings(epochs=1, batch_size=16, lr=1e-3, sparsity_lambda=1e-4, **settings)
    data = synthetic_data(16 * steps, 4, seed=0)
    optimizer, _ = make_optimizer(model, s)
    loss, _ = train_one_epoch(
        model, optimizer, data.train.to(device), data.mean, data.std, s, device, epoch_generator(0, 1)
    )
    return model, loss


@pytest.mark.parametrize("channels_last", [True, False])
def test_on_the_cpu_amp_keeps_fp32_and_channels_last_decides_the_input_layout(channels_last):
    torch.manual_seed(0)
    model = build_model("resnet50", 4, width=0.0625)
    dtypes = _conv_output_dtypes(model)
    inputs: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
    s = FitSettings(epochs=1, batch_size=16, lr=1e-3, amp=True, channels_last=channels_last)
    data = synthetic_data(32, 4, seed=0)
    train_one_epoch(model, make_optimizer(model, s)[0], data.train, data.mean, data.std, s, CPU, epoch_generator(0, 1))
    assert dtypes and set(dtypes) == {torch.float32}  # bf16 autocast is CUDA-only
    nhwc = [x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() for x in inputs]
    assert len(inputs) == 2 and nhwc == [channels_last] * 2


def _cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: the bf16 autocast, channels_last and on-device paths run only on a GPU")
    return torch.device("cuda", 0)


@pytest.mark.gpu
def test_amp_trains_a_step_in_bf16_on_cuda():
    device = _cuda()
    torch.manual_seed(0)
    model = build_model("resnet50", 4, width=0.0625).to(device)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dtypes = _conv_output_dtypes(model)
    s = FitSettings(epochs=1, batch_size=16, lr=1e-3, amp=True, channels_last=True)
    data = synthetic_data(32, 4, seed=0)
    optimizer, _ = make_optimizer(model, s)
    loss, _ = train_one_epoch(
        model, optimizer, data.train.to(device), data.mean, data.std, s, device, epoch_generator(0, 1)
    )
    assert dtypes and set(dtypes) == {torch.bfloat16} and math.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # bf16 compute, fp32 weights
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.gpu
def test_channels_last_output_equals_contiguous_output_on_cuda():
    device = _cuda()
    torch.manual_seed(0)
    model = build_model("resnet50", 4, width=0.25).to(device).eval()
    x = normalize(synthetic_data(8, 4, seed=0).train.images.to(device), (0.5,) * 3, (0.25,) * 3)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # TF32 would round the two layouts' different kernels differently
    try:
        with torch.inference_mode():
            contiguous = model(x.contiguous())
            model.to(memory_format=torch.channels_last)
            channels_last = model(x.contiguous(memory_format=torch.channels_last))
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    assert torch.allclose(channels_last, contiguous, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_a_cuda_epoch_syncs_the_host_a_fixed_number_of_times_not_once_per_step():
    device = _cuda()

    def host_syncs(steps: int) -> int:
        _one_epoch(device, 1)  # warm-up: cuDNN plans, caches
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                _one_epoch(device, steps)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    assert host_syncs(2) == host_syncs(6)
