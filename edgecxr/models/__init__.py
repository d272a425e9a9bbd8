"""Backbones and their weights: the registry, checkpoints, weight import, signing, the INT8 target
(which CPUs an INT8 file is exact on), and opening any model file."""
