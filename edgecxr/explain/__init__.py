"""Explanations: Grad-CAM and LIME."""
