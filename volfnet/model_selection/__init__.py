"""Choosing the final model from trained folds: the pooled cross-validation (and, to come,
the best configuration and ensembles). Above inference and evaluation in the import graph."""
