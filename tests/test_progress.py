"""One progress policy: a bar on a terminal, sparse plain lines in a log, nothing with --quiet."""
from __future__ import annotations

import io
import os
import pty
import re
from pathlib import Path

import pytest

from edgecxr.progress import LogProgress, mode, progress

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def auto_policy(monkeypatch):
    monkeypatch.delenv("EDGECXR_PROGRESS", raising=False)
    monkeypatch.delenv("EDGECXR_PROGRESS_INTERVAL", raising=False)
    return monkeypatch


def test_log_stream_gets_whole_lines_and_no_carriage_returns(auto_policy):
    auto_policy.setenv("EDGECXR_PROGRESS_INTERVAL", "0")
    log = io.StringIO()
    assert list(progress(range(5), desc="work", unit="img", stream=log)) == list(range(5))
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert [re.sub(r"\(\d+ s\)", "(T s)", line) for line in lines] == [f"work: {i}/5 img (T s)" for i in range(1, 6)]


def test_short_work_in_a_log_prints_nothing_at_the_default_interval(auto_policy):
    log = io.StringIO()
    bar = progress(total=1000, desc="bench", unit="run", stream=log)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    assert isinstance(bar, LogProgress) and bar.n == 1000 and log.getvalue() == ""


def test_terminal_gets_a_redrawn_tqdm_bar(auto_policy):
    from tqdm import tqdm

    leader, follower = pty.openpty()
    with os.fdopen(follower, "w") as tty:
        assert mode(tty) == "bar"
        bar = progress(range(3), desc="work", stream=tty, leave=True)
        assert isinstance(bar, tqdm)
        list(bar)
        bar.close()
        tty.flush()
        drawn = os.read(leader, 4096)
    os.close(leader)
    assert b"\r" in drawn and b"work" in drawn


def test_quiet_silences_every_policy(auto_policy):
    for forced in ("bar", "log", "auto"):
        auto_policy.setenv("EDGECXR_PROGRESS", forced)
        auto_policy.setenv("EDGECXR_PROGRESS_INTERVAL", "0")
        log = io.StringIO()
        assert list(progress([1, 2], desc="x", enabled=False, stream=log)) == [1, 2]
        assert log.getvalue() == ""


def test_environment_overrides_the_terminal_check(auto_policy):
    auto_policy.setenv("EDGECXR_PROGRESS", "off")
    log = io.StringIO()
    auto_policy.setenv("EDGECXR_PROGRESS_INTERVAL", "0")
    list(progress(range(3), desc="x", stream=log))
    assert log.getvalue() == ""
    auto_policy.setenv("EDGECXR_PROGRESS", "bar")
    assert mode(io.StringIO()) == "bar"


def test_no_module_draws_its_own_tqdm_bar():
    """A bar made outside ``edgecxr/progress.py`` would bypass the log policy."""
    offenders = []
    for pkg in ("edgecxr", "train", "convert", "bench", "device", "scripts"):
        for path in (ROOT / pkg).rglob("*.py"):
            if path != ROOT / "edgecxr" / "progress.py" and re.search(r"^\s*(from tqdm|import tqdm)", path.read_text(), re.M):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
