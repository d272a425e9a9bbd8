"""Judging a model: metrics, the evaluation loop and its plots, the tolerance a converted file must
meet, and one file measured in a process of its own (bench and convert both time files with it)."""
