"""One exception type for everything a user can fix.

The CLI turns an :class:`EdgecxrError` into a single line on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class EdgecxrError(Exception):
    """A problem with the user's input or environment, with a message saying how to fix it."""
