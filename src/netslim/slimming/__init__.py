"""Pruning math in small pure functions: the L1 penalty on γ, the global |γ| threshold, surgery, BN recalibration."""
