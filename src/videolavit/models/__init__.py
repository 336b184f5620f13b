"""Models: nn.Modules and their configs only (no Lightning, MLflow, DVC or Optuna)."""
