"""The study's figures (FIGURES), drawn in memory: Optuna's optimization history and parameter importances of the
validation accuracy, and accuracy against parameters with the feasible region shaded."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from netslim.config import Config
from netslim.io import atomic_path
from netslim.vocabulary import NUM_PARAMS

FIGURES = ("history.png", "importances.png", "accuracy_vs_params.png")
OBJECTIVE = "validation accuracy"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: Path) -> None:
    """`fig` as a PNG file at `path`, written atomically, and closed."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")  # Optuna's legends sit right of the axes
    _pyplot().close(fig)


def _note(text: str) -> Any:
    """A figure that says why there is nothing to plot."""
    fig, ax = _pyplot().subplots(figsize=(5.6, 2.8))
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


def _optuna_figure(plot: Callable[..., Any], study: optuna.Study) -> Any:
    """The figure of one of optuna.visualization.matplotlib's plots of validation accuracy."""
    plt = _pyplot()
    with warnings.catch_warnings(), plt.rc_context():  # the plots switch the global style to ggplot: keep it local
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return plot(study, target_name=OBJECTIVE).figure


def plot_history(study: optuna.Study, config: Config) -> Any:
    """Optuna's optimization history: each complete trial's validation accuracy (infeasible ones in gray) and the
    best feasible value so far, with the accuracy constraint drawn in."""
    from optuna.visualization.matplotlib import plot_optimization_history

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return _note("no trial has completed yet: there is no validation accuracy to plot")
    fig = _optuna_figure(plot_optimization_history, study)
    ax = fig.axes[0]
    ax.axhline(config.constraints.min_accuracy, ls="--", color="tab:green", label="min accuracy")
    ax.legend(bbox_to_anchor=(1.05, 1.0), loc="upper left")
    return fig


def plot_importances(study: optuna.Study) -> Any:
    """Optuna's parameter importances (its default evaluator) for validation accuracy; a note with fewer than 2
    complete trials, where any split of importance would be arbitrary."""
    from optuna.visualization.matplotlib import plot_param_importances

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return _note(f"parameter importances need at least 2 complete trials; the study has {len(complete)}")
    try:
        return _optuna_figure(plot_param_importances, study)
    except (ValueError, RuntimeError) as e:  # e.g. every complete trial has the same parameters
        return _note(f"parameter importances cannot be computed: {e}")


def plot_accuracy_params(rows: list[dict[str, Any]], summary: dict[str, Any], config: Config) -> Any:
    """Validation accuracy against parameters of the complete trials, the feasible region shaded, the best marked
    (Optuna has no plot of the objective against a user attribute)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    cons = config.constraints
    xs = [r[NUM_PARAMS] for r in complete] + [cons.max_params]
    ys = [r["val_acc"] for r in complete] + [cons.min_accuracy]
    x_lo, x_hi = min(xs) / 2, max(xs) * 2
    y_lo, y_hi = max(0.0, min(ys) - 0.05), min(1.0, max(ys) + 0.05)
    ax.fill_between(
        [x_lo, cons.max_params],
        cons.min_accuracy,
        y_hi,
        color="tab:green",
        alpha=0.15,
        label=f"feasible: val acc >= {cons.min_accuracy}, params <= {cons.max_params:,}",
    )
    for feasible, style in ((True, dict(color="tab:blue", marker="o")), (False, dict(color="tab:red", marker="x"))):
        group = [r for r in complete if (r["feasible"] is True) == feasible]
        if group:
            ax.scatter(
                [r[NUM_PARAMS] for r in group],
                [r["val_acc"] for r in group],
                label="feasible trials" if feasible else "infeasible trials",
                **style,
            )
    if "trial" in summary:
        ax.scatter(
            [summary[NUM_PARAMS]],
            [summary["val_acc"]],
            s=220,
            marker="*",
            color="gold",
            edgecolor="k",
            zorder=3,
            label=f"{'best' if summary['feasible'] else 'closest'}: trial {summary['trial']}",
        )
    if not complete:
        ax.text(0.5, 0.5, "no complete trials yet", ha="center", transform=ax.transAxes)
    ax.set_xscale("log")
    ax.set(
        xlim=(x_lo, x_hi),
        ylim=(y_lo, y_hi),
        xlabel="parameters (pruned model)",
        ylabel="validation accuracy",
        title="Accuracy vs parameters",
    )
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def figures(study: optuna.Study, rows: list[dict[str, Any]], summary: dict[str, Any], config: Config) -> dict:
    """The study's figures by file name (FIGURES), in memory."""
    made = (plot_history(study, config), plot_importances(study), plot_accuracy_params(rows, summary, config))
    return dict(zip(FIGURES, made, strict=True))
