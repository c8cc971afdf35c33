"""Drift detection by the service's monitor on seasonal streams with marked drift.

Run through ``python benchmarks/drift.py --seasonal [--seeds 3] [--out out/]``.

Every stream goes through :class:`~streamadapt.pipeline.Pipeline` with the default forecast
model (``liquid``) and a :class:`~streamadapt.monitor.DriftMonitor` with detector ``adwin``
and adaptation switched off (``on_loss=(), on_input=()``), so detection is measured alone:

* ``linkload-drastic``, ``linkload-moderate``: the link-failure scenario (Abilene, 2000
  five-minute rounds, one failure at the middle), one stream per seed;
* ``flights_reroute``, ``births_merge``, ``pizza_merge``: the real seasonal series of
  :mod:`streamadapt.datasets.seasonal`, full length, with their one marked drift; the
  seed is the model's and the monitor's.

A detection on either signal within 500 events after a mark finds it (events counted in
stream order); a detection within ``WINDOW`` events after a mark belongs to it; every other
detection is a false alarm, per 10k events counted from the moment that signal's watcher is
ready, outside the windows. Each monitor configuration in :data:`CONFIGS` is run: the
service defaults (``seasonal``: seasonal reference for the input statistic only), the same
with the seasonal loss signal too (``seasonal+loss``), and the monitor without seasonal
references with the former defaults (``plain``: warm-up 1000, bootstrap blocks of 50).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from streamadapt.adapters.registry import make_model
from streamadapt.datasets import load_dataset
from streamadapt.monitor import DriftMonitor
from streamadapt.pipeline import Pipeline

WINDOW, FOUND = 1000, 500
CONFIGS: dict[str, dict[str, Any]] = {
    "seasonal": {},
    "seasonal+loss": {"season_signals": ("input", "loss")},
    "plain": {"seasons": None, "warmup": 1000, "calibration_block": 50},
}


def _streams(seed: int) -> list[tuple[str, dict[str, Any]]]:
    out = [(f"linkload-{sev}", {"name": "linkload", "seed": seed, "severity": sev})
           for sev in ("drastic", "moderate")]
    return out + [(n, {"name": n}) for n in ("flights_reroute", "births_merge", "pizza_merge")]


def run_one(params: dict[str, Any], seed: int, config: dict[str, Any]) -> dict[str, Any]:
    params = dict(params)
    stream = load_dataset(params.pop("name"), **params)
    events = list(stream.events)
    ts = np.array([e.timestamp for e in events])
    mon = DriftMonitor(detector="adwin", on_loss=(), on_input=(), record_metrics=False,
                       seed=seed, **config)
    pipe = Pipeline("forecast", {"m": make_model("liquid", seed=seed)}, monitor=mon)
    ready: dict[str, int] = {}
    for i in range(0, len(events), 256):
        pipe.step(events[i:i + 256])
        for sig, w in mon.watchers.items():
            if w.ready and sig not in ready:
                ready[sig] = min(i + 256, len(events))
    marks = [int(np.searchsorted(ts, c)) for c in stream.drift_points]
    out: dict[str, Any] = {"events": len(events), "marks": marks}
    for sig in mon.watchers:
        hits = [int(np.searchsorted(ts, e["timestamp"])) for e in mon.timeline
                if e["type"] == "detection" and e["signal"] == sig]
        start = ready.get(sig, len(events))
        delays = [min((h - c for h in hits if c <= h < c + WINDOW), default=None)
                  for c in marks]
        false = [h for h in hits if not any(c <= h < c + WINDOW for c in marks)]
        clean = len(events) - start - sum(min(WINDOW, len(events) - c) for c in marks
                                          if c >= start)
        out[sig] = {"delays": delays, "false_alarms": len(false), "clean_events": clean,
                    "ready_at": start, "calibration": mon.calibration()[sig]}
    return out


def _fmt_delays(delays: list[int | None]) -> str:
    return ",".join("-" if d is None else str(d) for d in delays)


def seasonal_main(seeds: int, out: Path, console: Console) -> None:
    t0 = time.time()
    results: dict[str, Any] = {"configs": CONFIGS, "runs": {}}
    for cname, config in CONFIGS.items():
        for seed in range(seeds):
            for sname, params in _streams(seed):
                with console.status(f"{cname}: {sname}, seed {seed}"):
                    r = run_one(params, seed, config)
                results["runs"].setdefault(cname, {}).setdefault(sname, []).append(r)
    results["seconds"] = time.time() - t0
    table = Table(title=f"DriftMonitor (liquid, adwin, no adaptation), {seeds} seeds: delay "
                        f"in events per seed, found < {FOUND} on either signal, false "
                        "alarms per 10k events per signal")
    for col in ("config", "stream", "loss delays", "input delays", "found <500",
                "loss FA/10k", "input FA/10k"):
        table.add_column(col, justify="right")
    summary: dict[str, Any] = {}
    for cname, by_stream in results["runs"].items():
        for sname, runs in by_stream.items():
            found = sum(
                any(d is not None and d < FOUND for d in (a, b))
                for r in runs for a, b in zip(r["loss"]["delays"], r["input"]["delays"],
                                              strict=True))
            marks = sum(len(r["marks"]) for r in runs)
            fa = {s: 1e4 * sum(r[s]["false_alarms"] for r in runs)
                  / max(sum(r[s]["clean_events"] for r in runs), 1) for s in ("loss", "input")}
            summary.setdefault(cname, {})[sname] = {"found": found, "marks": marks, **fa}
            table.add_row(cname, sname,
                          " ".join(_fmt_delays(r["loss"]["delays"]) for r in runs),
                          " ".join(_fmt_delays(r["input"]["delays"]) for r in runs),
                          f"{found}/{marks}", f"{fa['loss']:.2f}", f"{fa['input']:.2f}")
    console.print(table)
    results["summary"] = summary
    s = summary["seasonal"]
    ok = {n: v["found"] == v["marks"] and v["loss"] <= 1.0 and v["input"] <= 1.0
          for n, v in s.items()}
    results["goal_met"] = ok
    console.print("goal (every mark found within 500 events, <= 1 false alarm per 10k on "
                  "each signal), service defaults: " + ", ".join(
                      f"{n} {'MET' if v else 'NOT MET'}" for n, v in ok.items()))
    (out / "drift_seasonal.json").write_text(json.dumps(results, indent=2, default=str))
    console.print(f"wrote {out / 'drift_seasonal.json'} in {results['seconds']:.0f} s")
