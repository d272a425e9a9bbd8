"""The PyTorch model's own logits: the reference every artifact is compared with.

Its own module, importing nothing of edgecxr, because the verification (``verify.py``),
the golden vectors (``golden.py``) and the accuracy-controlled INT8 search
(``accuracy_control.py``, called while a format is produced) all need it, and the
last must not import the verification's contract reading (that import closed a
circle through the formats table).
"""
from __future__ import annotations

from typing import Any

import numpy as np

BATCH = 32


def torch_logits(model: Any, x: np.ndarray) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), BATCH):
            out.append(model(torch.from_numpy(np.ascontiguousarray(x[i : i + BATCH]))).numpy())
    return np.concatenate(out).astype(np.float32)
