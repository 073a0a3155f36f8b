"""netslim: Network Slimming (Liu et al., ICCV 2017) as a DVC + MLflow + Optuna pipeline."""
