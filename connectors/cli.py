"""The ``streamadapt`` command line: the composition root that wires settings, sources,
sinks and the core together.

Each sub-command lives in its own module under :mod:`connectors.commands` and defines
``add_parser(subparsers)``, which registers the command and sets ``func`` (a callable taking
the parsed namespace and returning the exit code).
"""

from __future__ import annotations

import argparse
import importlib
import os
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


def _limit_torch_threads() -> None:
    """Micro-batches of small networks run fastest on one thread; a service that lets torch
    spread every step over all cores fights itself and its neighbours. Before any command
    parses its settings, the count comes from ``STREAMADAPT_TORCH_THREADS`` (0 keeps torch's
    default); ``streamadapt run`` then applies the ``torch_threads`` setting, wherever it
    was set (:func:`connectors.commands.run.apply_process_settings`)."""
    raw = os.environ.get("STREAMADAPT_TORCH_THREADS", "1")
    try:
        n = int(raw)
    except ValueError:
        raise SystemExit(
            f"invalid setting torch_threads = {raw!r}: expected an integer >= 0"
        ) from None
    if n > 0:
        import torch

        torch.set_num_threads(n)


def main(argv: Sequence[str] | None = None) -> int:
    _limit_torch_threads()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
