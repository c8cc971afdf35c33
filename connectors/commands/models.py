"""``streamadapt models``: list the registered model names and what each one is."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from streamadapt.adapters.registry import specs
from streamadapt.events import TASKS

__all__ = ["add_parser", "models_command"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("models", help="list the model names usable with --models / --model",
                       description=__doc__)
    p.add_argument("--task", choices=TASKS, help="only the models of this task")
    p.set_defaults(func=models_command)


def models_command(args: argparse.Namespace) -> int:
    table = Table(title="registered models" + (f" ({args.task})" if args.task else ""))
    for head in ("name", "task", "summary"):
        table.add_column(head, overflow="fold")
    for spec in sorted(specs().values(), key=lambda s: (s.task, s.name)):
        if args.task is None or spec.task == args.task:
            table.add_row(spec.name, spec.task, spec.summary)
    Console(width=120).print(table)
    return 0
