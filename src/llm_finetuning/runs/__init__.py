"""The self-describing run directory: config, manifest, metrics, plots, checkpoints and the final model."""
