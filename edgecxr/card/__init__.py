"""The model card: what a model is, how it was measured, where it must not be used."""
