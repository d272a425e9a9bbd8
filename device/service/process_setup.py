"""What both of the service's processes (the classifier and the DICOM receiver) share: the log
line format and the settling once started. Stdlib only."""
from __future__ import annotations

import gc
import sys


def log_line(message: str) -> None:
    sys.stderr.write(f"edgecxr-serve: {message}\n")
    sys.stderr.flush()


def settle() -> None:
    """Once started: move every object made so far (the model, its runtime, pydicom, pynetdicom,
    highdicom: about 126,000 tracked objects) out of the garbage collector's view, so that a full
    collection while serving does not walk them all with every thread stopped (30-165 ms each at
    start-up on the shared 2-core machine; none fell inside a 200-image run either way)."""
    gc.collect()
    gc.freeze()
