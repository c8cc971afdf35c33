"""CTR benchmark on real binary event streams: every registered click model side by side.

One command (``python benchmarks/ctr.py [--out out] [--limit N] [--seeds 0,1,2]``):

* **Streams**, each a fixed real stream in time order: ``movielens`` (rating >= 4 is a
  click) and the binary streams of :mod:`streamadapt.datasets.binary`: ``flights`` (arrived
  late), ``mpls_stops`` (person searched) and ``bird_strikes`` (flight disrupted). Each is
  cut to its first ``--limit`` events (25,000 by default, so that the whole run fits in
  about ten minutes on two cores; ``--limit 0`` keeps everything).
* **Models**: river logistic regression, river FM, the base ``ctr-net`` and the four
  ReLoop2 variants (sketch or exact memory, with or without the gate), each built by its
  registered name with the run's seed. ``--models`` runs a subset (the goals below are then
  checked only if the default model, its base and river FM are among them), and
  ``--streams`` also takes ``clicks``, the synthetic click stream; for instance the
  before/after comparison of the click path (docs/performance.md, "Click path"):
  ``--streams flights,mpls_stops,bird_strikes,movielens,clicks --models
  ctr-net,ctr-net+reloop2``.
* **Protocol**: per stream and per seed, one prequential pass of
  :func:`streamadapt.evaluate.evaluate` with all models side by side (each model predicts
  an event before it learns from it). Seeds change the models only; the stream is fixed.
* **Metrics**: AUC, gAUC (per user; only where the stream has users), logloss and the
  model's events/s (predict + learn), each the mean over seeds (AUC also with its standard
  deviation).

Goals for the default CTR model (``DEFAULT_MODEL["ctr"]``, ``ctr-net+reloop2``): (a) an AUC
at least river FM's on every stream, (b) never more than 0.05 AUC points (0.0005 AUC) below
its base ``ctr-net`` on any stream, (c) +0.5 AUC points (0.005) or more over its base on
average across streams. Tables (markdown, each column's best in bold) and the goal lines are
printed and written to ``<out>/ctr/`` with ``results.json`` and ``auc.png``.

``--memory-sweep`` runs, instead of the comparison, the error-memory sweep behind the
default memory: per stream and seed one ``ctr-net`` and every variant of
:data:`MEMORY_VARIANTS` as ``ReLoop2(base, learn_base=False)`` over it, placed *before* the
base in the model dict, so each variant writes its memory from the base as it is before the
base learns the batch, exactly what the self-training ``ctr-net+reloop2`` does (the check of
this in ``benchmarks/reloop2.py`` applies). Results: ``<out>/ctr/memory.json`` and
``memory.md`` (AUC per variant, its gain over the base in AUC points, the memory's bytes).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from streamadapt.adapters.ctr_net import CtrNet
from streamadapt.adapters.registry import make_model
from streamadapt.adapters.reloop2 import ReLoop2
from streamadapt.datasets import Stream, load_dataset
from streamadapt.evaluate import evaluate
from streamadapt.settings import DEFAULT_MODEL

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

console = Console(width=140)

STREAMS = ("movielens", "flights", "mpls_stops", "bird_strikes")
#: Streams that ``--streams`` also takes (not run by default): ``clicks``, the synthetic
#: click stream (20,000 events, user x topic preferences).
EXTRA_STREAMS = ("clicks",)
MODELS = ("river-logreg", "river-fm", "ctr-net", "ctr-net+reloop2", "ctr-net+reloop2-exact",
          "ctr-net+reloop2-gated", "ctr-net+reloop2-exact-gated")
BASE = "ctr-net"
RIVAL = "river-fm"
#: Metric -> (report key, higher is better).
METRICS: dict[str, tuple[str, bool]] = {
    "AUC": ("auc", True), "gAUC": ("gauc", True), "logloss": ("logloss", False),
    "events/s": ("events_per_second", True),
}
#: Goal thresholds in AUC (not points): (b) the largest drop allowed, (c) the mean gain.
MAX_DROP = 0.0005
MIN_MEAN_GAIN = 0.005
#: Error-memory variants of ``--memory-sweep``: ReLoop2 parameters over its defaults
#: (sketch ``K=64, L=8``, ``lam=0.5, tau=0.1, gamma=1``).
MEMORY_VARIANTS: dict[str, dict[str, Any]] = {
    "sketch K=64 L=8": {"memory": "sketch", "n_tables": 64, "n_bits": 8},
    "sketch K=16 L=8": {"memory": "sketch", "n_tables": 16, "n_bits": 8},
    "sketch K=128 L=8": {"memory": "sketch", "n_tables": 128, "n_bits": 8},
    "sketch K=256 L=8": {"memory": "sketch", "n_tables": 256, "n_bits": 8},
    "sketch K=64 L=4": {"memory": "sketch", "n_tables": 64, "n_bits": 4},
    "sketch K=64 L=12": {"memory": "sketch", "n_tables": 64, "n_bits": 12},
    "sketch K=128 L=8 decay 0.9999": {"memory": "sketch", "n_tables": 128, "decay": 0.9999},
    "sketch K=128 L=8 lam 0.2": {"memory": "sketch", "n_tables": 128, "lam": 0.2},
    "sketch K=128 L=8 lam 0.3": {"memory": "sketch", "n_tables": 128, "lam": 0.3},
    "sketch K=128 L=8 lam 0.4": {"memory": "sketch", "n_tables": 128, "lam": 0.4},
    "sketch K=256 L=8 lam 0.3": {"memory": "sketch", "n_tables": 256, "lam": 0.3},
    "exact 4096 k=64": {"memory": "exact", "capacity": 4096, "n_neighbors": 64},
    "exact 16384 k=64": {"memory": "exact", "capacity": 16384, "n_neighbors": 64},
    "exact 16384 k=64 lam 0.3": {"memory": "exact", "capacity": 16384, "lam": 0.3},
}


def _load(name: str, limit: int | None) -> Stream:
    """The first ``limit`` events of stream ``name`` (``clicks`` is generated whole, then
    cut)."""
    if name not in EXTRA_STREAMS:
        return load_dataset(name, limit=limit)
    base = load_dataset(name)
    events = list(base.events)[:limit]
    return Stream(base.name, base.task, events, n_events=len(events), info=base.info)


def run_stream(name: str, limit: int | None, seeds: list[int], batch_size: int,
               models: tuple[str, ...] = MODELS) -> dict[str, Any]:
    """One prequential pass per seed over the first ``limit`` events of stream ``name``."""
    t0 = time.perf_counter()
    base = _load(name, limit)
    events = list(base.events)
    load_s = time.perf_counter() - t0
    runs = []
    for seed in seeds:
        stream = Stream(base.name, base.task, events, n_events=len(events), info=base.info)
        built = {m: make_model(m, task="ctr", seed=seed) for m in models}
        rep = evaluate(stream, built, batch_size=batch_size, progress=True)
        runs.append({"seed": seed, "wall_seconds": rep["wall_seconds"],
                     "models": {m: {k: r.get(k) for k, _ in METRICS.values()}
                                for m, r in rep["models"].items()}})
    users = sum(e.user_id != "-" for e in events)
    return {"n_events": len(events), "click_rate": float(np.mean([e.label for e in events])),
            "has_users": users > 0, "info": base.info, "load_seconds": load_s,
            "runs": runs, "summary": _summarise(runs, models)}


def run_memory_sweep(name: str, limit: int | None, seeds: list[int], batch_size: int
                     ) -> dict[str, Any]:
    """AUC of the base and of every memory variant over it, per seed, on stream ``name``."""
    base_stream = _load(name, limit)
    events = list(base_stream.events)
    runs = []
    for seed in seeds:
        stream = Stream(base_stream.name, base_stream.task, events, n_events=len(events),
                        info=base_stream.info)
        base = CtrNet(seed=seed)
        models: dict[str, Any] = {v: ReLoop2(base, learn_base=False, seed=seed, **params)
                                  for v, params in MEMORY_VARIANTS.items()}
        models[BASE] = base  # last: the variants write before the base learns
        rep = evaluate(stream, models, batch_size=batch_size, progress=True)
        runs.append({"seed": seed,
                     "auc": {m: rep["models"][m]["auc"] for m in models},
                     "bytes": {v: models[v].stats()["bytes"] for v in MEMORY_VARIANTS}})
    auc = {m: float(np.mean([r["auc"][m] for r in runs])) for m in [BASE, *MEMORY_VARIANTS]}
    return {"n_events": len(events), "runs": runs, "auc": auc,
            "gain_points": {v: 100 * (auc[v] - auc[BASE]) for v in MEMORY_VARIANTS},
            "bytes": runs[-1]["bytes"]}


def memory_markdown(results: dict[str, dict[str, Any]]) -> str:
    """One row per variant: AUC gain over the base per stream (points), mean, bytes."""
    streams = list(results)
    lines = ["| memory | " + " | ".join(streams) + f" | mean | bytes ({streams[-1]}) |",
             "|---|" + "---:|" * (len(streams) + 2),
             f"| {BASE} AUC | " + " | ".join(f"{results[s]['auc'][BASE]:.4f}" for s in streams)
             + " | | |"]
    for v in MEMORY_VARIANTS:
        gains = [results[s]["gain_points"][v] for s in streams]
        lines.append(f"| {v} | " + " | ".join(f"{g:+.2f}" for g in gains)
                     + f" | {np.mean(gains):+.2f} | {results[streams[-1]]['bytes'][v]:,} |")
    return "\n".join(lines)


def _summarise(runs: list[dict[str, Any]], models: tuple[str, ...] = MODELS
               ) -> dict[str, dict[str, Any]]:
    """Mean over seeds of each metric per model (``None`` when no seed has it), AUC's sd."""
    out: dict[str, dict[str, Any]] = {}
    for m in models:
        row: dict[str, Any] = {}
        for key, _ in METRICS.values():
            vals = [r["models"][m][key] for r in runs if r["models"][m][key] is not None]
            row[key] = float(np.mean(vals)) if vals else None
        aucs = [r["models"][m]["auc"] for r in runs if r["models"][m]["auc"] is not None]
        row["auc_sd"] = statistics.stdev(aucs) if len(aucs) > 1 else 0.0
        out[m] = row
    return out


def _cell(key: str, v: float | None) -> str:
    if v is None:
        return "-"
    if key == "events_per_second":
        return f"{v:,.0f}"
    return f"{v:.4f}"


def markdown_table(res: dict[str, Any]) -> str:
    """The stream's table in markdown, each column's best value in bold."""
    summ = res["summary"]
    models = list(summ)
    metrics = [(label, key, up) for label, (key, up) in METRICS.items()
               if key != "gauc" or res["has_users"]]
    best = {}
    for _, key, up in metrics:
        vals = [summ[m][key] for m in models if summ[m][key] is not None]
        best[key] = (max(vals) if up else min(vals)) if vals else None
    lines = ["| model | " + " | ".join(label for label, _, _ in metrics) + " |",
             "|---|" + "---:|" * len(metrics)]
    for m in models:
        cells = []
        for _, key, _ in metrics:
            text = _cell(key, summ[m][key])
            if key == "auc":
                text += f" ± {summ[m]['auc_sd']:.4f}"
            same = summ[m][key] is not None and _cell(key, summ[m][key]) == _cell(key,
                                                                                  best[key])
            cells.append(f"**{text}**" if same else text)
        name = f"{m} (default)" if m == DEFAULT_MODEL["ctr"] else m
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The three goals for the default model, each with its verdict and figures."""
    model = DEFAULT_MODEL["ctr"]
    auc = {s: {m: v["auc"] for m, v in r["summary"].items()} for s, r in results.items()}
    vs_rival = {s: a[model] - a[RIVAL] for s, a in auc.items()}
    gain = {s: a[model] - a[BASE] for s, a in auc.items()}
    mean_gain = float(np.mean(list(gain.values())))

    def pts(d: dict[str, float]) -> str:
        return ", ".join(f"{s} {100 * v:+.2f}" for s, v in d.items())

    return [
        {"goal": f"(a) {model} AUC >= {RIVAL} AUC on every stream",
         "met": all(v >= 0 for v in vs_rival.values()),
         "figures": f"AUC points over {RIVAL}: {pts(vs_rival)}"},
        {"goal": f"(b) {model} never below {BASE} by more than {100 * MAX_DROP:.2f} AUC "
                 "points on any stream",
         "met": all(v >= -MAX_DROP for v in gain.values()),
         "figures": f"AUC points over {BASE}: {pts(gain)}"},
        {"goal": f"(c) {model} gains >= {100 * MIN_MEAN_GAIN:+.1f} AUC points over {BASE} on "
                 "average across streams",
         "met": mean_gain >= MIN_MEAN_GAIN,
         "figures": f"mean {100 * mean_gain:+.2f} points over {len(gain)} streams"},
    ]


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    """AUC per model per stream: grouped bars, seed standard deviation as error bars."""
    streams = list(results)
    models = list(results[streams[0]]["summary"])
    fig, ax = plt.subplots(figsize=(12, 5))
    width = 0.8 / len(models)
    x = np.arange(len(streams))
    for i, m in enumerate(models):
        means = [results[s]["summary"][m]["auc"] for s in streams]
        sds = [results[s]["summary"][m]["auc_sd"] for s in streams]
        ax.bar(x + (i - (len(models) - 1) / 2) * width, means, width, yerr=sds, label=m)
    aucs = [results[s]["summary"][m]["auc"] for s in streams for m in models]
    ax.set_ylim(max(0.0, min(aucs) - 0.03), min(1.0, max(aucs) + 0.02))
    ax.set_xticks(x, [f"{s}\n({results[s]['n_events']:,} events)" for s in streams])
    ax.set_ylabel("AUC (mean over seeds)")
    ax.set_title("Prequential AUC on real binary streams")
    ax.legend(fontsize=8, ncol=4)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _print_table(name: str, res: dict[str, Any], seeds: list[int]) -> None:
    t = Table(title=f"{name}: {res['n_events']:,} events, click rate "
              f"{res['click_rate']:.3f}, seeds {seeds}")
    t.add_column("model")
    shown = [(label, key) for label, (key, _) in METRICS.items()
             if key != "gauc" or res["has_users"]]
    for label, _ in shown:
        t.add_column(label, justify="right")
    for m, s in res["summary"].items():
        t.add_row(m, *[_cell(key, s[key]) + (f" ± {s['auc_sd']:.4f}" if key == "auc" else "")
                       for _, key in shown])
    console.print(t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="out")
    ap.add_argument("--limit", type=int, default=25_000,
                    help="events per stream (0: the whole stream)")
    ap.add_argument("--streams", default=",".join(STREAMS),
                    help=f"comma-separated subset of {', '.join(STREAMS + EXTRA_STREAMS)}")
    ap.add_argument("--models", default=",".join(MODELS),
                    help="comma-separated subset of the models (the goals are checked only "
                         f"with {DEFAULT_MODEL['ctr']}, {BASE} and {RIVAL} among them)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated model seeds")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--memory-sweep", action="store_true",
                    help="run the error-memory sweep (MEMORY_VARIANTS) instead")
    args = ap.parse_args(argv)
    streams = [s for s in args.streams.split(",") if s]
    bad = [s for s in streams if s not in STREAMS + EXTRA_STREAMS]
    if bad:
        ap.error(f"unknown streams {bad}; valid choices: "
                 f"{', '.join(STREAMS + EXTRA_STREAMS)}")
    models = tuple(m for m in args.models.split(",") if m)
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        ap.error(f"unknown models {bad}; valid choices: {', '.join(MODELS)}")
    if args.limit < 0:
        ap.error(f"--limit must be >= 0, got {args.limit}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    torch.set_num_threads(1)
    out = Path(args.out) / "ctr"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.memory_sweep:
        return _memory_main(args, streams, seeds, out, t0)
    results: dict[str, dict[str, Any]] = {}
    md = []
    for name in streams:
        results[name] = run_stream(name, args.limit or None, seeds, args.batch_size,
                                   models)
        _print_table(name, results[name], seeds)
        md.append(f"**{name}** ({results[name]['n_events']:,} events, click rate "
                  f"{results[name]['click_rate']:.3f})\n\n{markdown_table(results[name])}")
    gl = goals(results) if {DEFAULT_MODEL["ctr"], BASE, RIVAL} <= set(models) else []
    wall = time.perf_counter() - t0
    for g in gl:
        console.print(f"{'MET' if g['met'] else 'MISSED'}: {g['goal']}: {g['figures']}")
    md.append("\n".join(f"* {'MET' if g['met'] else 'MISSED'}: {g['goal']}: {g['figures']}"
                        for g in gl))
    plot(results, out / "auc.png")
    (out / "tables.md").write_text("\n\n".join(md) + "\n")
    doc = {"config": vars(args), "seeds": seeds, "models": list(models),
           "default_model": DEFAULT_MODEL["ctr"], "platform": platform.platform(),
           "torch": torch.__version__, "streams": results, "goals": gl,
           "wall_seconds": wall}
    (out / "results.json").write_text(json.dumps(doc, indent=1, default=float))
    console.print(f"results: {out / 'results.json'}, {out / 'tables.md'}, "
                  f"{out / 'auc.png'}; {wall:.0f} s")
    return 0


def _memory_main(args: argparse.Namespace, streams: list[str], seeds: list[int], out: Path,
                 t0: float) -> int:
    results = {}
    for name in streams:
        results[name] = run_memory_sweep(name, args.limit or None, seeds, args.batch_size)
        console.print(f"{name}: base AUC {results[name]['auc'][BASE]:.4f}; gain (points) "
                      + ", ".join(f"{v} {g:+.2f}"
                                  for v, g in results[name]["gain_points"].items()))
    sizes = ", ".join(f"{s} {results[s]['n_events']:,}" for s in streams)
    md = (f"Error-memory sweep, AUC points over {BASE} (mean over seeds {seeds}; "
          f"{sizes} events)\n\n" + memory_markdown(results) + "\n")
    console.print(md)
    (out / "memory.md").write_text(md)
    doc = {"config": vars(args), "seeds": seeds, "variants": MEMORY_VARIANTS,
           "platform": platform.platform(), "torch": torch.__version__, "streams": results,
           "wall_seconds": time.perf_counter() - t0}
    (out / "memory.json").write_text(json.dumps(doc, indent=1, default=float))
    console.print(f"results: {out / 'memory.json'}, {out / 'memory.md'}; "
                  f"{doc['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
