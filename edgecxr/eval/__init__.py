"""Judging a model on labelled images: metrics, the evaluation loop, its plots."""
