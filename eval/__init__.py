"""Evaluation: answers on a test set, a local pairwise judge, and the report."""
