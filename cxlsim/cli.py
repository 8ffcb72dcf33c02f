"""`cxlsim` command line: each subcommand is a module in cxlsim/commands/ with
`add_parser(subparsers)` and `run(args) -> int`.

Errors cxlsim raises on purpose (bad files, bad arguments) print as one line naming the problem;
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import CxlsimError

COMMANDS = ["mlc", "cachesim", "replay", "compare", "trace", "pool"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxlsim", description="Emulator of CXL memory pooling and KV-cache tiering.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"cxlsim.commands.{name}")
        module.add_parser(sub).set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except CxlsimError as exc:
        print(f"cxlsim {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
