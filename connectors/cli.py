"""The ``streamadapt`` command line: the composition root that wires settings, sources,
sinks and the core together.

Each sub-command lives in its own module under :mod:`connectors.commands` and defines
``add_parser(subparsers)``, which registers the command and sets ``func`` (a callable taking
the parsed namespace and returning the exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from streamadapt import __version__

#: Sub-command modules, in the order ``--help`` lists them.
COMMANDS: list[str] = [
    "connectors.commands.run",
    "connectors.commands.evaluate",
    "connectors.commands.models",
    "connectors.commands.demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamadapt",
        description="Online streaming adaptation: predict, learn from every label, detect "
        "drift and adapt.",
    )
    parser.add_argument("--version", action="version", version=f"streamadapt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
