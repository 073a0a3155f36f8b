"""Optuna search over λ and the fine-tune learning rate under an accuracy and a parameter constraint.

Each trial sparsity-trains with a suggested λ, prunes at `search.ratio`, fine-tunes with a suggested lr and
returns the fine-tuned model's best **validation** accuracy (the test accuracy is kept aside and reported for
the best trial only). Constraints use Optuna's `trial.set_constraint` (feasible when every value <= 0):
accuracy `min_accuracy - val_acc` and params `(params - max_params) / max_params`.

Cost: λ lives on a log grid (`search.lambda_steps_per_decade` points per decade), so trials that share a λ
load its sparse checkpoint from `<search_reports>/cache/<λ label>.pt` instead of training it again (across
trials, workers on one machine, and restarts); a λ whose training diverged is cached as such too. A
MedianPruner stops fine-tunings whose per-epoch validation accuracy lags; a diverging loss prunes the trial
with the reason in its user attrs.

Storage: an Optuna RDB (SQLite file by default, PostgreSQL for several machines) with a heartbeat, so a killed
worker's trial turns FAIL instead of staying RUNNING. Rerunning continues the study until it holds
`n_trials` trials (finished or running on another worker): Optuna's MaxTrialsCallback counts them.

The trial's work is the pipeline's own steps (`netslim.steps`: sparsity training, pruning, fine-tuning), so a
trial computes what the stages would; this package adds only the search around them, one module per job:

- `study`: the study's names, its storage (URL, heartbeat, retries) and the settings it refuses to mix;
- `objective`: one trial (the λ cache, Optuna's pruner and constraints, one nested MLflow run per trial);
- `choice`: the best feasible trial (or the closest one), trials.csv's rows and best.json's summary;
- `figures`: the study's figures.

The stage (`netslim.stages.search`) picks the device, loads the data, opens the MLflow run and writes the outputs.
"""
