"""argparse with one-line errors: no usage block, and the closest valid option or choice named.

argparse prints its whole usage before an error and suggests nothing (its own suggestions come
only in Python 3.14); a typo deserves one line that says what was meant. Subcommand parsers are
made from this class too (``add_subparsers`` uses the parent's class).
"""
from __future__ import annotations

import argparse
import difflib
import re
import sys
from typing import Optional, Sequence


class CommandLineParser(argparse.ArgumentParser):
    def parse_known_args(self, args: Optional[Sequence[str]] = None, namespace=None):
        self._argv = list(sys.argv[1:] if args is None else args)  # for the command of an unknown option
        return super().parse_known_args(args, namespace)

    def error(self, message: str):  # argparse's hook for every parsing error; it must not return
        prog = self._command_parser().prog if message.startswith("unrecognized arguments") else self.prog
        self.exit(2, f"{prog}: error: {self.with_suggestion(message)}\n")

    def with_suggestion(self, message: str) -> str:
        choice = re.match(r"argument (\S+): invalid choice: '?([^'\s]*)'? \(choose from (.*)\)$", message)
        if choice:
            name, value, listed = choice.groups()
            valid = re.findall(r"'([^']*)'", listed) or [c.strip() for c in listed.split(",")]
            what = "command" if name in ("command", "{" + ",".join(valid) + "}") else name
            return f"{what}: invalid choice {value!r}" + _closest(value, valid) + f" (one of {', '.join(valid)})"
        unknown = re.match(r"unrecognized arguments: (.*)$", message)
        if unknown:
            flags = [t for t in unknown.group(1).split() if t.startswith("-")]
            if flags:
                flag = flags[0].split("=")[0]
                options = [s for a in self._command_parser()._actions for s in a.option_strings]
                return f"unknown option {flag}" + _closest(flag, options)
        return message

    def _command_parser(self) -> argparse.ArgumentParser:
        """The subcommand's parser when this is the top-level one (it reports the subcommand's
        unknown options), else this parser."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                given = [a for a in getattr(self, "_argv", []) if a in action.choices]
                if given:
                    return action.choices[given[0]]
        return self


def _closest(value: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(value, list(valid), n=1, cutoff=0.75)
    return f"; did you mean {close[0]}?" if close else ""
