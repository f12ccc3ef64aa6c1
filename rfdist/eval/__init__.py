"""Evaluation without Ray or MLflow: metrics (likelihood, Fréchet distance, OOD, sphere/circle),
feature extractors and plots."""
