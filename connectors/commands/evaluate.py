"""``streamadapt evaluate``: several models side by side, prequentially, in one pass.

The events come from a built-in dataset (``--dataset``) or a CSV, JSONL or Parquet file
(``--input`` with a column mapping). Writes a JSON report (schema in docs/evaluate.md) and a
PNG plot, and prints a summary table.

Examples::

    streamadapt evaluate --dataset bank_calls --models last-value,river-linear
    streamadapt evaluate --input clicks.csv --task ctr --target clicked --time ts \\
        --key user --item item --categorical country,device --numeric price
    streamadapt evaluate --input transactions.csv --task ctr --target fraud \\
        --categorical merchant,country --numeric amount,hour

A ctr file without ``--key`` or ``--item`` (a binary event stream with no users or items)
gives every impression the user or item ``-``; without users the report's gAUC is null.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from connectors.files import FORMATS, ColumnMap, file_stream
from streamadapt.adapters.base import Adapter
from streamadapt.adapters.registry import make_model, model_names, specs
from streamadapt.datasets import DATASETS, Stream
from streamadapt.drift.detectors import DETECTORS
from streamadapt.evaluate import evaluate
from streamadapt.events import TASKS
from streamadapt.monitor import monitor_from_settings
from streamadapt.pipeline import MISSING_LABEL_POLICIES
from streamadapt.plot import plot_report
from streamadapt.settings import DEFAULT_MODEL, DriftSettings

__all__ = ["add_parser", "evaluate_command", "default_models", "build_models"]

#: Preferred default models per task, used when registered; the naive reference first.
DEFAULT_MODELS: dict[str, tuple[str, ...]] = {
    "forecast": ("last-value", "river-linear", "liquid", "mlp-incremental-b1024"),
    "ctr": ("click-rate", "river-logreg", "ctr-net", "ctr-net+reloop2"),
}


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="compare models prequentially on a dataset or a file; write report + plot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("input")
    src.add_argument("--dataset", help=f"built-in dataset (default linkload): "
                     f"{', '.join(DATASETS)}")
    src.add_argument("--input", metavar="FILE", help="CSV, JSONL or Parquet file to replay")
    src.add_argument("--format", choices=FORMATS, help="file format (default: from extension)")
    src.add_argument("--task", choices=TASKS, help="task of --input: forecast or ctr")
    src.add_argument("--target", help="column of the load (forecast) or the 0/1 click (ctr)")
    src.add_argument("--time", help="column of the event time (unix seconds or ISO 8601)")
    src.add_argument("--key", help="column of the link id (forecast; default: one link named "
                     "after the file) or user id (ctr; default: no users, gAUC null)")
    src.add_argument("--item", help="column of the item id (ctr; default: no items)")
    src.add_argument("--categorical", default="", help="comma-separated categorical columns")
    src.add_argument("--numeric", default="", help="comma-separated numeric columns")
    src.add_argument("--id", help="column of the event id (default: the row number)")
    run = p.add_argument_group("evaluation")
    run.add_argument("--models", help="comma-separated model names (see `streamadapt models`)")
    run.add_argument("--report", default="out/report.json", help="JSON report path")
    run.add_argument("--plot", default="out/report.png", help="PNG plot path ('' for none)")
    run.add_argument("--limit", type=int, help="stop after N records")
    run.add_argument("--batch-size", type=int, default=256, help="micro-batch size")
    run.add_argument("--seed", type=int, default=0, help="seed of models and generators")
    run.add_argument("--slots", type=int, default=10, help="equal time slots in the report")
    run.add_argument("--slot-seconds", type=float, help="fixed slot width instead of --slots")
    run.add_argument("--window", type=int, default=12, help="recent loads per forecast input")
    run.add_argument("--attribution-window", type=float, default=3600.0,
                     help="seconds a click prediction waits for its label")
    run.add_argument("--missing-label", choices=MISSING_LABEL_POLICIES, default="negative",
                     help="what a click prediction whose label never came counts as")
    run.add_argument("--drift", metavar="DETECTOR",
                     help="run the drift monitor with this detector (e.g. adwin) on the "
                     "--primary model, with the service's default policy; its detections, "
                     "adaptations and outcomes go into the report and the plot")
    run.add_argument("--primary", help="the model the drift monitor watches and adapts "
                     "(default: the task's default model if listed, else the first "
                     "model that is not a constant baseline)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=evaluate_command)


def _split(text: str | None) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def _accepts(fn: Any, name: str) -> bool:
    params = inspect.signature(fn).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def default_models(task: str) -> list[str]:
    """The preferred defaults that are registered, else every model for ``task``."""
    have = model_names(task)
    chosen = [n for n in DEFAULT_MODELS.get(task, ()) if n in have]
    return chosen or have


def choose_primary(names: list[str], task: str, primary: str | None = None) -> str:
    """``primary`` if given (it must be among ``names``); else the task's default model if
    listed; else the first model that is not a baseline (:attr:`ModelSpec.baseline`)."""
    if primary is not None:
        if primary not in names:
            raise ValueError(f"--primary {primary!r} is not among the models: "
                             f"{', '.join(names)}")
        return primary
    if DEFAULT_MODEL[task] in names:
        return DEFAULT_MODEL[task]
    all_specs = specs()
    learners = [n for n in names if n in all_specs and not all_specs[n].baseline]
    return (learners or names)[0]


def build_models(names: list[str], task: str, seed: int) -> dict[str, Adapter]:
    """Fresh adapters by name, checked against ``task``; ``seed`` goes to each."""
    if len(set(names)) != len(names):
        raise ValueError(f"a model is named twice in --models: {', '.join(names)}")
    all_specs = specs()
    models = {}
    for name in names:
        spec = all_specs.get(name)
        params = {"seed": seed} if spec is not None and _accepts(spec.factory, "seed") else {}
        models[name] = make_model(name, task, **params)
    return models


def _stream(args: argparse.Namespace) -> Stream:
    if args.input:
        if args.dataset:
            raise ValueError("give --dataset or --input, not both")
        if not args.task or not args.target:
            raise ValueError("--input needs --task (forecast or ctr) and --target")
        cols = ColumnMap(args.task, target=args.target, time=args.time, key=args.key,
                         item=args.item, categorical=tuple(_split(args.categorical)),
                         numeric=tuple(_split(args.numeric)), id=args.id)
        return file_stream(args.input, cols, args.format)
    name = args.dataset or "linkload"
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(DATASETS)}")
    spec = DATASETS[name]
    if args.task and args.task != spec.task:
        raise ValueError(f"dataset {name!r} is a {spec.task!r} dataset, not {args.task!r}; "
                         f"{args.task} datasets: "
                         f"{', '.join(n for n, s in DATASETS.items() if s.task == args.task)}")
    mod, fn = spec.target.split(":")
    factory = getattr(importlib.import_module(mod), fn)
    params: dict[str, Any] = {}
    if _accepts(factory, "seed"):
        params["seed"] = args.seed
    if args.limit is not None and _accepts(factory, "limit"):
        params["limit"] = args.limit
    return spec.load(**params)


def _fmt(v: Any, spec: str = ".4g") -> str:
    return "-" if v is None else format(v, spec)


def _table(report: dict[str, Any]) -> Table:
    forecast = report["task"] == "forecast"
    cols = (("MAE", "mae"), ("RMSE", "rmse"), ("MAPE %", "mape")) if forecast else (
        ("AUC", "auc"), ("gAUC", "gauc"), ("logloss", "logloss"))
    no_users = not forecast and any(m["n"] and m.get("gauc_excluded") == m["n"]
                                    for m in report["models"].values())
    table = Table(title=f"{report['dataset']} ({report['task']}): {report['n_events']} events, "
                  f"{report['dead_letters']} dead letters",
                  caption="gAUC -: the impressions have no user id (no --key)"
                  if no_users else None)
    for head in ("model", "scored", *(c[0] for c in cols), "events/s"):
        table.add_column(head, justify="left" if head == "model" else "right")
    for name, m in report["models"].items():
        table.add_row(name, str(m["n"]), *(_fmt(m[k]) for _, k in cols),
                      _fmt(m["events_per_second"], ",.0f"))
    return table


def evaluate_command(args: argparse.Namespace) -> int:
    console = Console()
    err = Console(stderr=True)
    try:
        stream = _stream(args)
        names = _split(args.models) or default_models(stream.task)
        models = build_models(names, stream.task, args.seed)
        primary = choose_primary(names, stream.task, args.primary)
        monitor = None
        if args.drift:
            if args.drift not in DETECTORS:
                raise ValueError(f"unknown detector {args.drift!r}; valid choices: "
                                 f"{', '.join(DETECTORS)}")
            drift = DriftSettings(detector=args.drift)
            monitor = monitor_from_settings(drift, stream.task, seed=args.seed,
                                            record_metrics=False)
        report = evaluate(
            stream, models, batch_size=args.batch_size, window=args.window,
            attribution_window_s=args.attribution_window, missing_label=args.missing_label,
            slots=args.slots, slot_seconds=args.slot_seconds,
            progress=not args.no_progress, limit=args.limit, monitor=monitor,
            primary=primary,
        )
    except (ValueError, LookupError, ImportError, OSError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        return 2
    report["config"]["seed"] = args.seed
    report_path = Path(args.report)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    console.print(_table(report))
    if "drift" in report:
        d = report["drift"]
        console.print(f"drift on {d['primary']}: {d['detections']} detections, "
                      f"{d['adaptations']} adaptations applied ({d['kept']} kept, "
                      f"{d['rolled_back']} rolled back, {d['reset']} reset), "
                      f"{d['skipped']} actions skipped (no hook)", highlight=False)
    console.print(f"report: {report_path}", highlight=False)
    if args.plot:
        console.print(f"plot:   {plot_report(report, args.plot)}", highlight=False)
    return 0
