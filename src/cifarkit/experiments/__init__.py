"""Experiments on Optuna: `sweep` (a grid x paired seeds), `tune` (TPE + pruning on the validation split) and
`report` (statistics and plots). Studies are plain Optuna studies in SQLite or PostgreSQL."""
