"""edgecxr: train a lightweight chest X-ray classifier, convert it for the edge, and
measure what each step costs in size, accuracy and latency."""

__version__ = "0.1.0"
