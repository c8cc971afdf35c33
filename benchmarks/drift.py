"""Drift detectors on streams with known change points, after calibration.

One command::

    python benchmarks/drift.py [--seeds 2] [--out out/]
    python benchmarks/drift.py --seasonal [--seeds 3] [--out out/]

``--seasonal`` measures the monitor the service runs instead (see ``drift_seasonal.py``).

Streams (each with one abrupt change point, ``--seeds`` seeds each):

* ``linkload``: the link-failure scenario (Abilene, drastic failure at the middle); the
  symmetric relative error of a river linear forecaster (``loss``) and the log load of each
  sample (``input``). Loads follow a daily cycle (4032 events a day), so its warm-up is
  5000 events and the calibration bootstrap uses blocks of 1000;
* ``clicks``: the synthetic click stream with a preference shuffle at the middle (50 users,
  100 items, preference strength 3, so a model can learn the tastes the shuffle breaks);
  the log loss of a river factorisation machine;
* ``sea``, ``agrawal``: river's synthetic concept-drift generators (SEA variant 0 -> 2,
  Agrawal function 0 -> 2, switched abruptly), classified by river logistic regression; the
  log loss.

The signals are computed once per stream by the pipeline, then every detector runs on the
same values through a :class:`~streamadapt.drift.SignalWatcher` (burn-in 500, warm-up 1000
except for link loads, refractory period 1000, calibrated to ``--target`` false alarms per
10k). A detection within ``--window`` events
after a change point finds it (the first one gives the delay); any other detection is a
false alarm, counted per 10k events outside those windows. Goal for the default detector
(ADWIN): every change found within 500 events, at most 1 false alarm per 10k events.

Writes ``drift.json``, ``drift_detectors.png`` and ``drift_tradeoff.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from streamadapt.adapters.registry import make_model
from streamadapt.datasets import load_dataset
from streamadapt.drift import DETECTORS, SignalWatcher
from streamadapt.drift.signals import drift_loss, input_stat
from streamadapt.events import Impression
from streamadapt.pipeline import Pipeline

BURN_IN, WARMUP = 500, 1000


def _signals_of(name: str, task: str, events: list, model: str, change_ts: list[float],
                with_input: bool) -> list[dict]:
    """Run the pipeline once; the loss (and input) signal with change points as indices."""
    p = Pipeline(task, {"m": make_model(model, seed=0)})
    stat = input_stat(task, "log_load") if with_input else None
    losses, loss_ts, inputs, input_ts = [], [], [], []

    class _Tap:
        def before_predict(self, pipeline, xs):
            if stat is not None:
                inputs.append(stat(xs))
                input_ts.append(np.array([x.timestamp for x in xs]))

        def after_learn(self, pipeline, scores):
            s = scores["m"]
            losses.append(drift_loss(task, s.y_true, s.y_pred))
            loss_ts.append(s.timestamps)

    p.monitor = _Tap()
    for i in range(0, len(events), 256):
        p.step(events[i:i + 256])
    out = []
    for sig, vals, ts in (("loss", losses, loss_ts), ("input", inputs, input_ts)):
        if not vals:
            continue
        v, t = np.concatenate(vals), np.concatenate(ts)
        cps = [int(np.searchsorted(t, c)) for c in change_ts]
        warm = (5000, 1000) if name == "linkload" else (WARMUP, 50)
        out.append({"stream": name, "signal": sig, "values": v, "changes": cps,
                    "warmup": warm[0], "block": warm[1]})
    return out


def _river_stream(kind: str, seed: int, n: int) -> tuple[list, list[float]]:
    from river.datasets import synth

    if kind == "sea":
        base, after = synth.SEA(variant=0, seed=seed), synth.SEA(variant=2, seed=seed + 1)
    else:
        base = synth.Agrawal(classification_function=0, seed=seed)
        after = synth.Agrawal(classification_function=2, seed=seed + 1)
    # river's ConceptDriftStream overflows at width=1; an abrupt switch is the same thing
    pairs = [*base.take(n // 2), *after.take(n - n // 2)]
    events = [
        Impression(event_id=f"{kind}{i}", user_id="u", item_id="i", timestamp=float(i),
                   numeric={str(k): float(v) for k, v in x.items()}, label=int(bool(y)))
        for i, (x, y) in enumerate(pairs)
    ]
    return events, [float(n // 2)]


def build_signals(seeds: int, n: int) -> list[dict]:
    out = []
    for seed in range(seeds):
        s = load_dataset("linkload", seed=seed, n_steps=2000)
        out += _signals_of("linkload", "forecast", list(s.events), "river-linear",
                           s.drift_points, True)
        c = load_dataset("clicks", seed=seed, n_events=n, drift_at=[n // 2], n_users=50,
                         n_items=100, strength=3.0)
        out += _signals_of("clicks", "ctr", list(c.events), "river-fm", c.drift_points,
                           False)
        for kind in ("sea", "agrawal"):
            ev, cps = _river_stream(kind, seed, n)
            out += _signals_of(kind, "ctr", ev, "river-logreg", cps, False)
    return out


def score(values: np.ndarray, changes: list[int], hits: list[int], window: int,
          warmup: int) -> dict:
    start = BURN_IN + warmup
    delays, false = [], 0
    used = set()
    for h in hits:
        cp = next((c for c in changes if c <= h < c + window), None)
        if cp is None:
            false += 1
        elif cp not in used:
            used.add(cp)
            delays.append(h - cp)
    clean = len(values) - start - sum(min(window, len(values) - c) for c in changes)
    # how visible each change is: mean of the 1000 values after it minus the 1000 before,
    # in standard deviations of the values before
    shifts = [float((values[c:c + 1000].mean() - values[c - 1000:c].mean())
                    / max(values[c - 1000:c].std(), 1e-12)) for c in changes]
    return {"delays": delays, "missed": len(changes) - len(delays), "changes": len(changes),
            "false_alarms": false, "clean_events": max(clean, 1), "shifts": shifts}


def run_detector(sig: dict, detector: str, target: float, window: int, seed: int) -> dict:
    w = SignalWatcher(detector, warmup=sig["warmup"], burn_in=BURN_IN,
                      target_false_alarms=target, block=sig["block"],
                      direction="up" if sig["signal"] == "loss" else "both",
                      n_replay=5_000 if detector == "kswin" else 20_000, seed=seed)
    hits = []
    vals = sig["values"]
    for i in range(0, len(vals), 256):
        hits += [i + j for j, _ in w.update_many(vals[i:i + 256])]
    r = score(vals, sig["changes"], hits, window, sig["warmup"])
    r["calibration"] = w.calibration.to_dict() if w.calibration else None
    return r


def aggregate(rows: list[dict]) -> dict:
    delays = [d for r in rows for d in r["delays"]]
    changes = sum(r["changes"] for r in rows)
    return {
        "mean_delay": float(np.mean(delays)) if delays else float("nan"),
        "max_delay": int(max(delays)) if delays else None,
        "found_within_500": sum(d < 500 for d in delays),
        "changes": changes,
        "missed": sum(r["missed"] for r in rows),
        "mean_shift_sd": float(np.mean([x for r in rows for x in r["shifts"]])),
        "false_alarms_per_10k": 1e4 * sum(r["false_alarms"] for r in rows)
        / sum(r["clean_events"] for r in rows),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--events", type=int, default=20_000, help="events per click/river stream")
    ap.add_argument("--target", type=float, default=1.0, help="false alarms per 10k")
    ap.add_argument("--window", type=int, default=1000, help="events a detection may lag")
    ap.add_argument("--out", type=Path, default=Path("out"))
    ap.add_argument("--seasonal", action="store_true",
                    help="DriftMonitor with seasonal references on seasonal streams")
    args = ap.parse_args()
    torch.set_num_threads(1)
    console = Console()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.seasonal:
        from drift_seasonal import seasonal_main

        seasonal_main(args.seeds, args.out, console)
        return
    t0 = time.time()
    with console.status("computing the signals (pipeline runs)"):
        signals = build_signals(args.seeds, args.events)
    streams = sorted({(s["stream"], s["signal"]) for s in signals})
    results: dict = {"per_detector": {}, "tradeoff": {}, "args": {
        k: str(v) for k, v in vars(args).items()}}
    sweep = {"adwin": (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
             "page-hinkley": (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
             "ddm": (0.5, 1.0, 5.0, 30.0)}
    n_jobs = len(DETECTORS) * len(signals) + sum(len(v) for v in sweep.values()) * len(signals)
    with Progress(console=console) as bar:
        task = bar.add_task("detectors", total=n_jobs)
        for det in DETECTORS:
            rows = {}
            for s in signals:
                rows.setdefault(f"{s['stream']}/{s['signal']}", []).append(
                    run_detector(s, det, args.target, args.window, 0))
                bar.advance(task)
            results["per_detector"][det] = {
                "all": aggregate([r for v in rows.values() for r in v]),
                "loss": aggregate([r for k, v in rows.items() if k.endswith("/loss")
                                   for r in v]),
                "streams": {k: aggregate(v) for k, v in rows.items()},
            }
        for det, targets in sweep.items():
            for tgt in targets:
                rows = []
                for s in signals:
                    rows.append(run_detector(s, det, tgt, args.window, 0))
                    bar.advance(task)
                results["tradeoff"].setdefault(det, {})[str(tgt)] = aggregate(rows)
    results["seconds"] = time.time() - t0

    table = Table(title=f"Detectors after calibration to {args.target}/10k "
                        f"({args.seeds} seeds; delay in events)")
    for col in ("detector", "stream/signal", "shift (sd)", "mean delay", "max delay",
                "found <500", "missed", "false alarms/10k"):
        table.add_column(col, justify="right")
    for det, res in results["per_detector"].items():
        for key, a in [("ALL", res["all"]), *sorted(res["streams"].items())]:
            table.add_row(det if key == "ALL" else "", key, f"{a['mean_shift_sd']:.2f}",
                          f"{a['mean_delay']:.0f}",
                          str(a["max_delay"]), f"{a['found_within_500']}/{a['changes']}",
                          str(a["missed"]), f"{a['false_alarms_per_10k']:.2f}")
    console.print(table)
    trade = Table(title="Trade-off: calibration target vs delay and false alarms (all streams)")
    for col in ("detector", "target/10k", "mean delay", "found <500", "missed", "FA/10k"):
        trade.add_column(col, justify="right")
    for det, by_t in results["tradeoff"].items():
        for tgt, a in by_t.items():
            trade.add_row(det, tgt, f"{a['mean_delay']:.0f}",
                          f"{a['found_within_500']}/{a['changes']}", str(a["missed"]),
                          f"{a['false_alarms_per_10k']:.2f}")
    console.print(trade)
    results["goal_met"] = {}
    for part in ("all", "loss"):
        d = results["per_detector"]["adwin"][part]
        ok = d["found_within_500"] == d["changes"] and d["false_alarms_per_10k"] <= 1.0
        results["goal_met"][part] = ok
        console.print(f"goal for the default detector (adwin), {part} signals: "
                      f"{'MET' if ok else 'NOT MET'} - found {d['found_within_500']}/"
                      f"{d['changes']} within 500 events, {d['false_alarms_per_10k']:.2f} "
                      "false alarms per 10k")
    results["streams"] = [f"{a}/{b}" for a, b in streams]
    (args.out / "drift.json").write_text(json.dumps(results, indent=2, default=str))
    _plots(results, args.out)
    console.print(f"wrote {args.out / 'drift.json'} and plots in {results['seconds']:.0f} s")


def _plots(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(results["per_detector"])
    fa = [results["per_detector"][n]["all"]["false_alarms_per_10k"] for n in names]
    dl = [results["per_detector"][n]["all"]["mean_delay"] for n in names]
    ax.scatter(fa, dl)
    for n, x, y in zip(names, fa, dl, strict=True):
        ax.annotate(n, (x, y))
    ax.set_xlabel("false alarms per 10k events")
    ax.set_ylabel("mean detection delay (events)")
    ax.set_title("Detectors after calibration")
    fig.tight_layout()
    fig.savefig(out / "drift_detectors.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    for det, by_t in results["tradeoff"].items():
        xs = [a["false_alarms_per_10k"] for a in by_t.values()]
        ys = [a["mean_delay"] for a in by_t.values()]
        ax.plot(xs, ys, marker="o", label=det)
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel("false alarms per 10k events")
    ax.set_ylabel("mean detection delay (events)")
    ax.legend()
    ax.set_title("Trade-off over calibration targets")
    fig.tight_layout()
    fig.savefig(out / "drift_tradeoff.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
