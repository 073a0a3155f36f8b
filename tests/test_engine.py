"""The trainer: learns, records every epoch, keeps the best state, and resumes exactly."""

import pytest
import torch

from netslim.data import normalize
from netslim.engine import (
    FitSettings,
    epoch_generator,
    evaluate,
    fit,
    make_optimizer,
    steps_per_epoch,
    train_one_epoch,
)
from netslim.models import build_model, prunable_batchnorms

CPU = torch.device("cpu")
COLUMNS = {
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
    "sparsity",
    "seconds",
}


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model("resnet50", num_classes=4, width=0.0625)


def _small_vgg(seed=0):
    """Four conv+BN layers: learns the easy data in one epoch, and runs an epoch in a fraction of a second."""
    torch.manual_seed(seed)
    return build_model("vgg19", num_classes=4, cfg=[16, "M", 16, "M", 32, "M", 32])


def test_one_epoch_on_easy_data_beats_chance(tiny_data):
    model = _small_vgg()
    result = fit(model, tiny_data, FitSettings(epochs=1, batch_size=16, lr=3e-3), CPU)
    assert set(result.history[0]) == COLUMNS
    _, acc = evaluate(model, tiny_data.test, tiny_data.mean, tiny_data.std, CPU)
    assert acc > 0.5  # 4 classes: chance is 0.25


def _first_batch(tiny_data, augment: bool) -> torch.Tensor:
    model = _small_vgg()
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    s = FitSettings(epochs=1, batch_size=len(tiny_data.train), lr=1e-3, augment=augment)
    optimizer = make_optimizer(model, s)[0]
    train_one_epoch(model, optimizer, tiny_data.train, tiny_data.mean, tiny_data.std, s, CPU, epoch_generator(0, 1))
    return seen[0]


def test_without_augmentation_the_model_sees_the_shuffled_images_unchanged(tiny_data):
    order = torch.randperm(len(tiny_data.train), generator=epoch_generator(0, 1))  # the epoch's own permutation
    plain = normalize(tiny_data.train.images[order], tiny_data.mean, tiny_data.std)
    assert torch.equal(_first_batch(tiny_data, augment=False), plain)
    assert not torch.equal(_first_batch(tiny_data, augment=True), plain)  # cropped and flipped


def test_lr_drops_at_the_milestones(tiny_data):
    result = fit(_model(), tiny_data, FitSettings(epochs=4, batch_size=256, lr=1e-3, milestones=(0.5, 0.75)), CPU)
    assert [round(r["lr"], 8) for r in result.history] == [1e-3, 1e-3, 1e-4, 1e-5]


def test_cosine_schedule_anneals_the_lr_batch_by_batch_to_zero(tiny_data):
    # tiny_data's training split, in batches of 64: the cosine runs over epochs × steps optimizer steps.
    steps = steps_per_epoch(len(tiny_data.train), 64)
    assert steps >= 2
    s = FitSettings(epochs=3, batch_size=64, lr=1e-3, schedule="cosine", milestones=(0.5,))  # milestones unused
    result = fit(_small_vgg(), tiny_data, s, CPU)
    # The lr each epoch started with: half a cosine from 1e-3 at step 0, sampled every `steps` steps.
    assert [r["lr"] for r in result.history] == pytest.approx([1e-3, 7.5e-4, 2.5e-4], rel=1e-9)

    model = _small_vgg()
    optimizer, scheduler = make_optimizer(model, s, steps)
    train_one_epoch(
        model, optimizer, tiny_data.train, tiny_data.mean, tiny_data.std, s, CPU, epoch_generator(0, 1),
        scheduler=scheduler,
    )  # fmt: skip
    assert scheduler.last_epoch == steps  # stepped once a batch, not once an epoch
    assert optimizer.param_groups[0]["lr"] == pytest.approx(7.5e-4, rel=1e-9)
    for _ in range(2 * steps):
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_a_resumed_cosine_run_continues_its_schedule_where_it_stopped(tiny_data, tmp_path):
    torch.use_deterministic_algorithms(True, warn_only=True)
    settings = FitSettings(epochs=3, batch_size=64, lr=3e-3, schedule="cosine", sparsity_lambda=1e-4)
    full = fit(_small_vgg(), tiny_data, settings, CPU)
    state = tmp_path / "state.pt"
    _train_epochs_then_stop(_small_vgg(), tiny_data, settings, state, stop_after=2)
    resumed = fit(_small_vgg(seed=99), tiny_data, settings, CPU, state_path=state, resume=True)
    assert resumed.resumed_from_epoch == 2
    assert [r["lr"] for r in resumed.history] == [r["lr"] for r in full.history]
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]


@pytest.mark.slow  # 2 × 600 training steps
def test_l1_penalty_leaves_more_small_gammas_than_none(tiny_data):
    # Adam divides each step by the gradient's running RMS, so λ=1e-4 only shows once the loss
    # gradient on γ has faded: the run goes on well after the easy data is fit (about 600 steps).
    def small_gamma_share(lam):
        model = _small_vgg()
        fit(model, tiny_data, FitSettings(epochs=30, batch_size=32, lr=1e-2, sparsity_lambda=lam, milestones=()), CPU)
        gammas = torch.cat([bn.weight.detach().abs() for bn in prunable_batchnorms(model).values()])
        return float((gammas < 0.5).double().mean())

    without, with_l1 = small_gamma_share(0.0), small_gamma_share(1e-4)
    assert with_l1 > without + 0.1, (with_l1, without)


def test_best_state_is_the_best_validation_epoch(tiny_data):
    model = _model()
    result = fit(model, tiny_data, FitSettings(epochs=3, batch_size=64, lr=3e-3), CPU)
    best = max(result.history, key=lambda r: r["val_acc"])
    assert result.best_val_acc == best["val_acc"] and result.best_epoch == best["epoch"]
    model.load_state_dict(result.best_state)
    _, val_acc = evaluate(model, tiny_data.val, tiny_data.mean, tiny_data.std, CPU)
    assert val_acc == best["val_acc"]


def test_a_resumed_run_ends_exactly_like_an_uninterrupted_one(tiny_data, tmp_path):
    torch.use_deterministic_algorithms(True, warn_only=True)
    settings = FitSettings(epochs=3, batch_size=64, lr=3e-3, sparsity_lambda=1e-4)
    full = fit(_model(), tiny_data, settings, CPU)
    state = tmp_path / "state.pt"
    _train_epochs_then_stop(_model(), tiny_data, settings, state, stop_after=2)  # a crash after epoch 2
    resumed = fit(_model(seed=99), tiny_data, settings, CPU, state_path=state, resume=True)
    assert resumed.resumed_from_epoch == 2
    assert [r["test_acc"] for r in resumed.history] == [r["test_acc"] for r in full.history]
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]


class _Stop(Exception):
    pass


def _train_epochs_then_stop(model, data, settings, state, stop_after):
    def on_epoch(record, _model):
        if record["epoch"] == stop_after:
            raise _Stop

    try:
        fit(model, data, settings, CPU, state_path=state, on_epoch=on_epoch)
    except _Stop:
        pass


def test_set_deterministic_switches_deterministic_kernels_on_and_off_again() -> None:
    from netslim.engine import set_deterministic

    set_deterministic(True)
    assert torch.are_deterministic_algorithms_enabled()
    set_deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled()
