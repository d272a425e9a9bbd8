"""Golden vectors: an artifact that proves, wherever it lands, that it computes its model.

``edgecxr convert`` stores in every artifact's contract a few real verification
images as 8-bit grayscale (zlib, base64), the PyTorch FP32 probabilities on them and
the artifact's own probabilities on the conversion host. The self-test decodes them
and runs the device's own preprocessing (OpenCV or the numpy fallback) and runtime,
so a wrong integer kernel, a broken interpreter build or a preprocessing mismatch on
the target shows up as numbers before a single patient image is classified.

Pass/fail is judged against the host's outputs of the *same file*: on a healthy
device they agree to rounding. The FP32 comparison is printed beside it so a
reader sees how far the artifact is from its model at all. numpy + stdlib only.
"""
from __future__ import annotations

import base64
import zlib
from typing import Any

import numpy as np

from .backends import Backend
from .decision import softmax
from .preprocess import preprocess

SCHEMA = "edgecxr.selftest/1"
# Default tolerance against the host's outputs of the same file. Measured: FP32 files
# agree with the host to 1e-6 (x86 vs emulated Cortex-A72), INT8 bit for bit; the
# golden images are stored at the input size, where OpenCV and the numpy fallback
# preprocess bit-identically. A kernel that saturates moved probabilities by 0.49 on
# these images (full-range u8 x s8 on an emulated AVX2 CPU), far beyond it.
MAX_PROB_DIFF = 0.05
MIN_AGREEMENT = 1.0


def pack_images(grays: list[np.ndarray]) -> list[dict[str, Any]]:
    """uint8 HxW images -> JSON-safe entries: PNG's "sub" filter (each pixel minus its
    left neighbour, mod 256), zlib, base64; about 35 KB for a 224 px CXR."""
    out = []
    for g in grays:
        g = np.ascontiguousarray(g, dtype=np.uint8)
        sub = np.diff(g.astype(np.int16), axis=1, prepend=0).astype(np.uint8)
        out.append({"shape": [int(v) for v in g.shape], "filter": "sub",
                    "zlib_b64": base64.b64encode(zlib.compress(sub.tobytes(), 9)).decode("ascii")})
    return out


def unpack_images(entries: list[dict[str, Any]]) -> list[np.ndarray]:
    images = []
    for e in entries:
        raw = np.frombuffer(zlib.decompress(base64.b64decode(e["zlib_b64"])), dtype=np.uint8)
        img = raw.reshape(tuple(int(v) for v in e["shape"]))
        if e.get("filter") == "sub":
            img = np.cumsum(img, axis=1, dtype=np.uint8)  # wraps mod 256, undoing the filter exactly
        images.append(np.ascontiguousarray(img))
    return images


def golden_block(grays: list[np.ndarray], labels: list[str], fp32_probs: np.ndarray, host_probs: np.ndarray | None,
                 host: dict[str, Any], max_prob_diff: float = MAX_PROB_DIFF) -> dict[str, Any]:
    """The contract's ``selftest`` entry; ``host_probs`` is None when the host cannot run the file correctly."""
    return {
        "schema": SCHEMA, "images": pack_images(grays), "labels": list(labels),
        "fp32_probs": np.round(np.asarray(fp32_probs, dtype=np.float64), 7).tolist(),
        "host_probs": None if host_probs is None else np.round(np.asarray(host_probs, dtype=np.float64), 7).tolist(),
        "host": host, "tolerance": {"max_prob_diff": max_prob_diff, "min_top1_agreement": MIN_AGREEMENT},
    }


def probabilities(backend: Backend, grays: list[np.ndarray]) -> np.ndarray:
    """The device path exactly: preprocess with the contract's spec, run, softmax."""
    spec = backend.contract.preprocess
    rows = [softmax(backend.predict(preprocess(g, spec)[None]).astype(np.float64))[0] for g in grays]
    return np.stack(rows)


def _compare(p: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    return float(np.abs(p - ref).max()), float((p.argmax(1) == ref.argmax(1)).mean())


def run_selftest(backend: Backend) -> dict[str, Any]:
    """Run the golden vectors; ``passed`` is None when the file carries none."""
    block = (backend.contract.selftest if backend.contract is not None else None) or None
    if not block or block.get("schema") != SCHEMA:
        return {"passed": None, "reason": "no golden vectors in this model's contract (convert it with a current edgecxr)"}
    grays = unpack_images(block["images"])
    p = probabilities(backend, grays)
    fp32 = np.asarray(block["fp32_probs"], dtype=np.float64)
    tol = block.get("tolerance") or {}
    max_dp, min_agree = float(tol.get("max_prob_diff", MAX_PROB_DIFF)), float(tol.get("min_top1_agreement", MIN_AGREEMENT))
    dp_fp32, agree_fp32 = _compare(p, fp32)
    out: dict[str, Any] = {"images": len(grays), "max_prob_diff_vs_fp32": dp_fp32, "top1_agreement_vs_fp32": agree_fp32,
                           "tolerance": {"max_prob_diff": max_dp, "min_top1_agreement": min_agree},
                           "host": (block.get("host") or {}).get("model", "?")}
    if block.get("host_probs") is not None:
        dp_host, agree_host = _compare(p, np.asarray(block["host_probs"], dtype=np.float64))
        out.update(max_prob_diff_vs_host=dp_host, top1_agreement_vs_host=agree_host)
        bad = dp_host > max_dp or agree_host < min_agree
        why = f"max |dp| {dp_host:.4f} vs the conversion host (limit {max_dp}), top-1 agreement {agree_host:.0%}"
    else:  # the conversion host could not run it correctly; judge against FP32 with the same limits
        bad = agree_fp32 < min_agree or dp_fp32 > max(max_dp, 0.25)
        why = f"max |dp| {dp_fp32:.4f} vs PyTorch FP32, top-1 agreement {agree_fp32:.0%} (no host reference)"
    out["passed"] = not bad
    out["reason"] = why
    return out


def selftest_line(result: dict[str, Any]) -> str:
    """One line for a terminal or a table cell."""
    if result.get("passed") is None:
        return f"self-test: n/a ({result.get('reason', 'no golden vectors')})"
    head = "PASS" if result["passed"] else "FAIL"
    parts = [f"self-test {head} on {result['images']} golden images:"]
    if "max_prob_diff_vs_host" in result:
        parts.append(f"vs conversion host max |dp| {result['max_prob_diff_vs_host']:.2e}, top-1 {result['top1_agreement_vs_host']:.0%};")
    parts.append(f"vs PyTorch FP32 max |dp| {result['max_prob_diff_vs_fp32']:.2e}, top-1 {result['top1_agreement_vs_fp32']:.0%}")
    line = " ".join(parts)
    if not result["passed"]:
        line += f" -- outside tolerance ({result['reason']})"
    return line


def selftest_cell(result: dict[str, Any] | None) -> str:
    """Short form for a table column: PASS 3e-07 / FAIL 0.41 / n/a."""
    if not result or result.get("passed") is None:
        return "n/a"
    dp = result.get("max_prob_diff_vs_host", result.get("max_prob_diff_vs_fp32", 0.0))
    return f"{'PASS' if result['passed'] else 'FAIL'} {dp:.0e}"
