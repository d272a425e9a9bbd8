"""Compare two export folders of the same checkpoint, artifact by artifact: are the model bytes
identical, and are the contracts identical (read through the one door, ``device/formats.py``)?

Used to show that a change to how convert writes files changed nothing a device reads:

    python scripts/dev/compare_exports.py BEFORE_DIR AFTER_DIR

Exit 1 when an artifact is missing on one side or its contract differs.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ (nested dicts compared key by key)."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(prefix + k)
    return out


def main(argv: list[str]) -> int:
    from edgecxr.convert.formats import find_artifacts
    from edgecxr.device.formats import artifact_files, read_contract

    before, after = Path(argv[0]), Path(argv[1])
    names = sorted({Path(p).name for p, _ in find_artifacts(str(before))} | {Path(p).name for p, _ in find_artifacts(str(after))})
    bad = 0
    print("| artifact | model bytes | contract |\n|---|---|---|")
    for name in names:
        a, b = before / name, after / name
        if not a.exists() or not b.exists():
            print(f"| {name} | missing {'before' if not a.exists() else 'after'} | - |")
            bad += 1
            continue
        files = [Path(f) for f in artifact_files(str(a)) if not f.endswith(".json")]
        same_bytes = all(_sha(f) == _sha(b.parent / f.name) for f in files)
        ca, cb = read_contract(str(a)), read_contract(str(b))
        diff = _diff_keys(ca.to_dict(), cb.to_dict()) if ca and cb else ["(missing)"]
        bad += bool(diff)
        print(f"| {name} | {'identical' if same_bytes else 'differ'} | {'identical' if not diff else 'differs: ' + ', '.join(diff)} |")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
