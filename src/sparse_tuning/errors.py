"""The one exception type for a user's mistake.

``UserError``: a bad option, a bad file, bad data, a request the model cannot do: the command line
prints its message as one line and exits 2, before any work starts where it can. It is a
``ValueError`` (code that catches ValueError keeps working). Anything else that escapes is a bug:
the command line prints its traceback and asks for a report.
"""
from __future__ import annotations


class UserError(ValueError):
    """A user's mistake, said in one line: what was wrong and what to do instead."""
