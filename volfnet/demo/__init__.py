"""The built-in demo: a synthetic dataset and the whole volfnet path on it."""
