"""Dataset folders, sources, the split, synthetic images and few-shot episodes."""
