"""Evaluation beyond the headline metrics (subgroups)."""
