"""Representation metrics: plain functions over NumPy/PyTorch arrays (no Ray, Parquet or MLflow)."""
