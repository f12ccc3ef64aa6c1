"""Datasets: synthetic manifolds with known densities, Parquet sources, writer and readers."""
