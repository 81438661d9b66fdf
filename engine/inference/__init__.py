"""Applying a trained model: ``predictor`` (one interface for a checkpoint, the shipped model and the classical
filter), ``predict`` (load a checkpoint, predict one photograph at its scale) and ``batch`` (a queued job over a
folder or a zip, with post-processing and a stats table)."""
