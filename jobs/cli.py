"""The `longshot` command: one subcommand per step, plus inspection commands.

Exit statuses: 0 success; 2 bad usage or bad input; 3 some units failed (finished units are
kept: fix the cause and run the same command again); 4 the folder holds a run with another
config (see --force); 5 the folder is in use by another run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobs.lock import FolderLocked
from jobs.runtime import EXIT_CONFIG_MISMATCH, EXIT_LOCKED, ConfigMismatch

EXIT_BAD_INPUT = 2


class BadInput(Exception):
    """Input the user can fix (a missing file, a malformed manifest): printed without a traceback."""


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options every resumable step takes."""
    p.add_argument("--executor", choices=["ray", "inprocess"], default="ray",
                   help="where units run (default: ray; starts a local Ray unless --ray-address)")
    p.add_argument("--ray-address", help="join an existing Ray cluster (e.g. 10.0.0.1:6379)")
    p.add_argument("--workers", type=int, help="CPUs of the local Ray (default: all cores)")
    p.add_argument("--force", action="store_true",
                   help="start this step over when the folder holds a run with another config")
    p.add_argument("--max-attempts", type=int, default=3, help="attempts per unit before giving up")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def resolve_chat_format(spec: str | None, tokenizer_path: str | None):
    """--chat-format (a name or a JSON file), else the tokenizer folder's, else longshot's."""
    from pipeline.chat_formats import ChatFormatError, chat_format

    try:
        return chat_format(spec, tokenizer_path)
    except ChatFormatError as exc:
        raise BadInput(str(exc)) from None


def _cmd_status(args) -> int:
    from jobs.status import status_text

    print(status_text(Path(args.dir), quick=args.quick))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="longshot", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("status", help="show the state of every job in a folder")
    p.add_argument("dir", help="an output folder of any step")
    p.add_argument("--quick", action="store_true",
                   help="check checkpoints by their files' sizes, not by hashing every byte")
    p.set_defaults(func=_cmd_status)
    for register in _registrars():
        register(sub)
    return ap


def _registrars():
    """Subcommands defined next to their steps; each module adds its own parser."""
    from jobs.steps import registrars

    return registrars()


_EXIT_CODES = [(BadInput, EXIT_BAD_INPUT), (ConfigMismatch, EXIT_CONFIG_MISMATCH),
               (FolderLocked, EXIT_LOCKED), (FileNotFoundError, EXIT_BAD_INPUT)]
_USER_ERRORS = tuple(kind for kind, _ in _EXIT_CODES)


def main(argv: list[str] | None = None) -> int:
    from jobs.known_warnings import filter_known_warnings

    filter_known_warnings()  # before any step imports Megatron
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command as given, for steps that re-run it as several ranks
    try:
        return args.func(args)
    except _USER_ERRORS as exc:  # problems the user can fix: one line, no traceback
        print(f"longshot {args.command}: {exc}", file=sys.stderr)
        return next(code for kind, code in _EXIT_CODES if isinstance(exc, kind))

if __name__ == "__main__":
    # `python -m jobs.cli` runs this file as __main__; the steps raise jobs.cli's BadInput, so
    # dispatch through the imported module, whose except clause knows that class.
    import importlib

    sys.exit(importlib.import_module("jobs.cli").main())
