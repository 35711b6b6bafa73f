"""The ``sparse-tuning`` command line: it parses and prints; the work is in library functions.

Nothing here imports torch at load time: ``--help`` and argument errors answer at once. User
mistakes (``errors.UserError``) print one line and exit 2, no traceback; anything else is a bug
and prints its traceback and a request to report it (exit 1).
"""
from __future__ import annotations

import argparse
import errno
import sys
from typing import Optional, Sequence

from . import deploy, measure, train
from .parser import CommandLineParser


def cmd_demo(args: argparse.Namespace) -> int:
    from ..tools.demo import run_demo

    run_demo(args.out, quick=args.quick)
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    import dataclasses

    from ..methods import all_methods

    for m in all_methods():
        options = [f.name for f in dataclasses.fields(m.options)] if m.options else []
        extra = f"  [options: {', '.join('--' + o.replace('_', '-') for o in options)}]" if options else ""
        print(f"{m.name:14s} {m.help}{extra}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = CommandLineParser(
        prog="sparse-tuning",
        description="Sparse-Tuning for Vision Transformers: token sparsification + Dense Adapters.")
    sub = parser.add_subparsers(dest="command", required=True)
    measure.add_flops_command(sub)
    p = sub.add_parser("demo", help="offline demo: pre-train a small ViT, fine-tune it with every method, report")
    p.add_argument("--out", default="sparse-tuning-demo", help="report folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a smaller run, under a minute")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("methods", help="the methods and their own options")
    p.set_defaults(func=cmd_methods)
    train.add_commands(sub)
    measure.add_commands(sub)
    deploy.add_commands(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = make_parser().parse_args(argv)
    args.argv = argv  # recorded by commands that write how they were run
    from ..errors import UserError
    from ..training.errors import Interrupted, TrainingError

    try:
        return args.func(args)
    except Interrupted as e:  # a clean stop, with a checkpoint: the shell's code for the signal
        print(f"sparse-tuning {args.command}: {e}", file=sys.stderr)
        return 128 + e.signal
    except KeyboardInterrupt:  # a second Ctrl-C during training, or any Ctrl-C elsewhere: at once
        after = "; the last checkpoint stands (--resume continues from it)" if args.command == "train" else ""
        print(f"sparse-tuning {args.command}: interrupted{after}", file=sys.stderr)
        return 130
    except (UserError, FileNotFoundError, TrainingError) as e:  # DataError and RunFolderError are UserErrors
        return _one_line(args.command, str(e))
    except OSError as e:
        if e.errno not in USER_OS_ERRORS:
            return _bug(args.command)  # a bug, or a fault of this machine: keep the traceback
        return _one_line(args.command, f"{e.filename or ''}: {e.strerror}".lstrip(": "))
    except Exception:  # anything else is a bug, ours or a library's: its traceback, and a request
        return _bug(args.command)


def _bug(command: str) -> int:
    import traceback

    traceback.print_exc()
    print(f"sparse-tuning {command}: the error above is not a mistake in what you asked but a fault in "
          "sparse-tuning or a library it uses; please report it with the traceback and the command", file=sys.stderr)
    return 1


# The machine refuses what the user asked of it: a read-only or full output folder, a path that
# is a file where a folder is needed.
USER_OS_ERRORS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
                  errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG}


def _one_line(command: str, message: str) -> int:
    message = message.strip()
    if "Original Traceback" in message:  # re-raised from a DataLoader worker: keep its last line
        message = message.splitlines()[-1].split(": ", 1)[-1]
    print(f"sparse-tuning {command}: error: {message.splitlines()[0] if message else 'failed'}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
