"""Backbones and their weights: the registry, checkpoints, weight import, signing, and opening any model file."""
