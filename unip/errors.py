"""Errors a user can fix (a bad spec, a checkpoint that does not match its model, an unsupported
family). The CLI prints them as one `error: <message>` line and exits 1; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class UnipError(Exception):
    """An expected failure with a message that says what to change."""
