"""Checking an audit log offline with the device's public key alone: which line, if any, was touched.

Two witnesses, the signed one first. The checkpoints (ed25519, :mod:`.audit`) list a
fingerprint of every line up to the last of them, by position: the first position where
the file differs from that list is the tampered line, and the neighbours tell the kind
(a line there that belongs one later: the record was deleted; the line that belongs here
comes next: this one was inserted; both: two lines were swapped; neither: edited). That
holds even when a forger rewrote the hash chain after the change. After the last
checkpoint only the chain speaks (``seq`` and ``prev`` of each line), which names the
line as long as the chain was not rewritten; and a log that stops without its closing
checkpoint is reported as a cut-off tail (or a device still writing, or one that lost
power), never as verified.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .audit import checkpoint_valid, fingerprint, line_hash, load_public_key, split_lines

OK, TAMPERED, OPEN_TAIL = "ok", "tampered", "open tail"


@dataclass
class AuditReport:
    status: str  # OK, TAMPERED or OPEN_TAIL
    first_bad: int | None = None  # 0-based line index of the first bad record (TAMPERED), or the cut point (OPEN_TAIL)
    kind: str = ""  # edited | inserted | deleted | reordered | tail cut | bad checkpoint
    message: str = ""
    lines: int = 0
    decisions: int = 0
    checkpoints: int = 0
    notes: list[str] = field(default_factory=list)

    def text(self) -> list[str]:
        head = {OK: "OK", TAMPERED: "TAMPERED", OPEN_TAIL: "NOT CLOSED"}[self.status]
        out = [f"{head}: {self.message}" if self.message else head]
        out.append(f"{self.lines} lines, {self.decisions} decisions, {self.checkpoints} valid signed checkpoints")
        return out + self.notes


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _authority(lines: list[bytes], parsed: list[dict[str, Any] | None], key: Any) -> tuple[dict[int, str], list[int], int | None]:
    """Fingerprints by position from every validly signed checkpoint; their line indexes; the first bad checkpoint."""
    auth: dict[int, str] = {}
    good, bad = [], None
    for i, obj in enumerate(parsed):
        if not obj or obj.get("kind") != "checkpoint":
            continue
        if not checkpoint_valid(obj, key):
            bad = i if bad is None else bad
            continue
        good.append(i)
        for k, fp in enumerate(obj.get("fps") or []):
            auth.setdefault(int(obj["from_seq"]) + k, str(fp))
        auth.setdefault(int(obj["seq"]), fingerprint(lines[i]))
    return auth, good, bad


def _by_authority(lines: list[bytes], auth: dict[int, str]) -> tuple[int, str, str] | None:
    """``(index, kind, message)`` at the first position whose line differs from the signed fingerprints."""
    fps = [fingerprint(x) for x in lines]
    n = len(lines)
    for i in range(n):
        if i not in auth or auth[i] == fps[i]:
            continue
        here_is_next = fps[i] == auth.get(i + 1)
        next_is_here = i + 1 < n and fps[i + 1] == auth[i]
        if here_is_next and next_is_here:
            return i, "reordered", f"line {i + 1} and line {i + 2} are swapped (the signed checkpoint lists them the other way)"
        if here_is_next:
            return i, "deleted", f"record {i} (line {i + 1}) was deleted: line {i + 1} holds what the signed checkpoint lists next"
        if next_is_here:
            return i, "inserted", f"line {i + 1} was inserted: the signed checkpoint lists the line after it here"
        return i, "edited", f"line {i + 1} was edited: its fingerprint differs from the signed checkpoint's"
    max_pos = max(auth) if auth else -1
    if n <= max_pos:
        return n, "deleted", f"line {n + 1} onward was deleted: the signed checkpoints list {max_pos + 1} lines, the file has {n}"
    return None


def _torn_recovered(parsed: list[dict[str, Any] | None], lines: list[bytes], i: int) -> bool:
    nxt = parsed[i + 1] if i + 1 < len(parsed) else None
    torn = (nxt or {}).get("torn") or {}
    return bool(nxt and nxt.get("kind") == "start" and torn.get("sha256") == line_hash(lines[i]))


def _chain_problem(obj: dict[str, Any], i: int, lines: list[bytes], parsed: list[dict[str, Any] | None],
                   prev: str | None) -> tuple[int, str, str] | None:
    seq = obj.get("seq")
    if seq == i and obj.get("prev") == prev:
        return None
    if seq == i:
        return i - 1, "edited", f"line {i} was edited: line {i + 1} records a different sha256 for it"
    nxt = parsed[i + 1] if i + 1 < len(parsed) else None
    if isinstance(seq, int) and seq > i:
        if nxt and nxt.get("seq") == i:
            return i, "reordered", f"line {i + 1} (seq {seq}) and line {i + 2} (seq {i}) are swapped"
        return i, "deleted", f"record {i} (line {i + 1}) was deleted: line {i + 1} holds seq {seq}"
    if i >= 2 and obj.get("prev") == line_hash(lines[i - 2]):  # a forged line fitted in before this one
        return i - 1, "inserted", f"line {i} was inserted: line {i + 1} continues the chain from line {i - 1}"
    if nxt and nxt.get("seq") == i:
        return i, "inserted", f"line {i + 1} (seq {seq}) was inserted: line {i + 2} continues the chain"
    return i, "edited", f"line {i + 1} is out of place or edited (seq {seq}, expected {i})"


def _by_chain(lines: list[bytes], parsed: list[dict[str, Any] | None], notes: list[str]) -> tuple[int, str, str] | None:
    prev: str | None = None
    for i, obj in enumerate(parsed):
        if obj is None:
            if _torn_recovered(parsed, lines, i):
                notes.append(f"line {i + 1}: torn by a power cut during an append; the next session chained past it")
                continue
            return i, "edited", f"line {i + 1} is not a JSON record (edited or damaged)"
        problem = _chain_problem(obj, i, lines, parsed, prev)
        if problem:
            return problem
        prev = line_hash(lines[i])
    return None


def verify_log(path: str, public_key: str) -> AuditReport:
    """Check ``path`` against the device key in ``public_key`` (PEM); see the module docstring."""
    key = load_public_key(path=public_key)
    with open(path, "rb") as fh:
        lines, torn = split_lines(fh.read())
    parsed = [_parse(x) for x in lines]
    rep = AuditReport(OK, lines=len(lines) + (torn is not None))
    rep.decisions = sum(1 for o in parsed if o and o.get("kind", "decision") == "decision")
    auth, good, bad_cp = _authority(lines, parsed, key)
    rep.checkpoints = len(good)
    # The signed fingerprints outrank the chain: lines before the first difference from them are the
    # device's own, so a chain break the heuristics place earlier is a misreading, not a second fault.
    found = [p for p in [_by_authority(lines, auth)] if p]
    if not found:
        found = [p for p in [_by_chain(lines, parsed, rep.notes)] if p]
        if bad_cp is not None:
            found.append((bad_cp, "bad checkpoint", f"line {bad_cp + 1}: a checkpoint whose signature does not verify with this device key"))
    else:
        _by_chain(lines, parsed, rep.notes)  # only for its notes (torn lines)
    if found:
        i, kind, msg = min(found, key=lambda p: p[0])
        rep.status, rep.first_bad, rep.kind, rep.message = TAMPERED, i, kind, msg
        return rep
    if torn is not None:
        rep.notes.append(f"line {len(lines) + 1}: torn last line (a power cut during an append); not counted")
    last = parsed[-1] if parsed else None
    if not (last and last.get("kind") == "checkpoint" and last.get("final") and good and good[-1] == len(lines) - 1):
        cp = good[-1] if good else None
        since = f"the last signed checkpoint is line {cp + 1}" if cp is not None else "there is no signed checkpoint"
        after = len(lines) - 1 - (cp if cp is not None else -1)
        rep.status, rep.first_bad, rep.kind = OPEN_TAIL, len(lines), "tail cut"
        rep.message = (f"no closing checkpoint: {since} and {after} line(s) after it are unsigned; the log was cut after "
                       f"line {len(lines)}, or the device is still writing it or lost power")
        return rep
    rep.message = f"every line is chained and covered by a signed checkpoint (the last, line {len(lines)}, closes the log)"
    return rep
