"""Link-load forecasting under failure drift: the liquid forecaster against its baselines.

Reproduces the comparison of "Liquid Neural Network-based Adaptive Learning vs. Incremental
Learning for Link Load Prediction amid Concept Drift due to Network Failures" (arXiv
2404.05304) on the seeded scenario of :mod:`streamadapt.datasets.linkload`, through the
prequential harness :func:`streamadapt.evaluate.evaluate`:

* for ``drastic`` and ``moderate`` failures, over ``--seeds`` seeds: RMSE, MAPE, and the
  time to convergence after the failure, per model (mean and standard deviation);
* the same models on the real series fpp3/bank_calls;
* the throughput of the liquid adapter on one core, micro-batches of 256 links,
  predict-only and predict+learn, beside the baselines'; and on micro-batches shaped as the
  embedded run's (256 samples of the 14 Abilene links), as sequences and as waves;
* the embedded default ``streamadapt run`` (27,000 Abilene events), as sequences and as
  waves: events/s against the goal of 50k, and the prequential MAE of both paths;
* a plot of the rolling error around the failure.

Time to convergence: per step, the mean absolute percentage error over the links (percent
errors, because re-routed links carry more load afterwards and their absolute noise grows
with it); the pre-failure level is its mean over the ``--pre-steps`` steps before the
failure; the model has converged at the first step ``k`` after the failure from which the
mean over the next ``--conv-window`` steps is within ``--tol`` (10%) of that level. The
table gives ``k - failure`` in steps; a model that never gets there counts as the number
of steps left in the run, and the ``conv`` column says in how many runs it got there.

Run: ``python benchmarks/linkload.py [--out out] [--seeds 3] [--quick]``; writes
``<out>/linkload.json`` and ``<out>/linkload_rolling.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamadapt.adapters.link_state import waves
from streamadapt.adapters.registry import make_model
from streamadapt.datasets import load_dataset
from streamadapt.datasets.linkload import linkload_stream
from streamadapt.evaluate import evaluate
from streamadapt.features import WindowStore
from streamadapt.pipeline import Pipeline, Scores

MODELS = [
    "last-value", "river-linear", "river-snarimax", "river-holtwinters", "mlp-static",
    "mlp-incremental-b256", "mlp-incremental-b1024", "mlp-incremental-b4096", "liquid",
]
SEVERITIES = ("drastic", "moderate")


class Recorder:
    """A pipeline monitor that keeps every score (label time, truth, prediction) per model."""

    def __init__(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = {}

    def before_predict(self, pipeline: Pipeline, xs: Sequence[Any]) -> None:
        return None

    def after_learn(self, pipeline: Pipeline, scores: Mapping[str, Scores]) -> None:
        for name, s in scores.items():
            self.parts.setdefault(name, []).append(
                np.stack([s.timestamps, s.y_true, s.y_pred]))

    def arrays(self, name: str) -> np.ndarray:
        return np.concatenate(self.parts[name], axis=1)


def step_ape(arr: np.ndarray, t0: float, step_s: float, n_steps: int) -> np.ndarray:
    """Mean absolute percentage error per step (NaN where a step has no nonzero label)."""
    t, y, p = arr
    step = np.rint((t - t0) / step_s).astype(np.int64)
    ok = (y > 0) & (step >= 0) & (step < n_steps)
    ape = np.abs(p[ok] - y[ok]) / y[ok] * 100.0
    total = np.bincount(step[ok], ape, minlength=n_steps)
    count = np.bincount(step[ok], minlength=n_steps)
    with np.errstate(invalid="ignore"):
        return total / count


def convergence(err: np.ndarray, fail: int, pre_steps: int, window: int, tol: float
                ) -> tuple[int, bool, float]:
    """Steps after ``fail`` until the next ``window`` steps' mean error is within ``tol`` of
    the mean over the ``pre_steps`` before it; (steps, converged, pre-failure level)."""
    pre = float(np.nanmean(err[max(0, fail - pre_steps):fail]))
    for k in range(fail, len(err) - window + 1):
        if np.nanmean(err[k:k + window]) <= (1 + tol) * pre:
            return k - fail, True, pre
    return len(err) - fail, False, pre


def run_scenario(severity: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    stream = linkload_stream(seed=seed, topology=args.topology, n_steps=args.steps,
                             severity=severity)
    models = {n: make_model(n, seed=seed) for n in args.models}
    rec = Recorder()
    report = evaluate(stream, models, batch_size=256, monitor=rec, progress=False)
    fail = stream.info["failures"][0]["step"]
    out: dict[str, Any] = {"failure": stream.info["failures"][0], "models": {}}
    for name in models:
        err = step_ape(rec.arrays(name), 0.0, 300.0, args.steps)
        steps, ok, pre = convergence(err, fail, args.pre_steps, args.conv_window, args.tol)
        m = report["models"][name]
        post = rec.arrays(name)[:, rec.arrays(name)[0] >= fail * 300.0]
        out["models"][name] = {
            "rmse": m["rmse"], "mape": m["mape"], "ttc_steps": steps, "converged": ok,
            "pre_failure_mape": pre,
            "post_rmse": float(np.sqrt(np.mean((post[2] - post[1]) ** 2))),
            "events_per_second": m["events_per_second"],
            "step_mape": err.tolist(),
        }
    return out


def bank_calls(args: argparse.Namespace) -> dict[str, Any]:
    stream = load_dataset("bank_calls", limit=args.bank_limit)
    params = {"river-holtwinters": {"seasonality": 169}}  # 07:00-21:00 in 5-minute steps
    models = {n: make_model(n, seed=0, **params.get(n, {})) for n in args.models}
    report = evaluate(stream, models, batch_size=256, progress=False)
    return {n: {"rmse": m["rmse"], "mape": m["mape"], "mae": m["mae"]}
            for n, m in report["models"].items()}


def throughput(names: Sequence[str], n_links: int = 256, n_steps: int = 40) -> dict[str, Any]:
    """Events/s on one core, micro-batches of ``n_links`` links (one sample each)."""
    rng = np.random.default_rng(0)
    store = WindowStore(window=12)
    phase = rng.uniform(0, 6.28, n_links)
    batches = [[store.push(f"l{i}", 300.0 * t, 100 + 30 * math.sin(t / 40 + phase[i])
                           + rng.normal(0, 2)) for i in range(n_links)]
               for t in range(n_steps + 1)]
    out = {}
    for name in names:
        res = {}
        for mode in ("predict", "predict+learn"):
            model = make_model(name, seed=0)
            for b in batches[:3]:  # warm the per-link state
                model.predict_many(b)
            t0 = time.perf_counter()
            for i in range(3, n_steps):
                model.predict_many(batches[i])
                if mode == "predict+learn":
                    model.learn_many(batches[i], [x.last for x in batches[i + 1]])
            res[mode] = (n_steps - 3) * n_links / (time.perf_counter() - t0)
        out[name] = res
    return out


def throughput_sequences(n_steps: int = 400, batch: int = 256) -> dict[str, float]:
    """Events/s of ``liquid`` on micro-batches shaped as the embedded run's: ``batch``
    consecutive samples of the Abilene scenario (14 links, so about 18 samples per link),
    predicted and learned from as sequences (one call) and as waves (per wave, learn the
    labels that came, then predict)."""
    events = list(linkload_stream(seed=0, n_steps=n_steps).events)
    store = WindowStore(window=12)
    batches = [store.push_many([e.link_id for e in b], [e.timestamp for e in b],
                               [e.load for e in b]) for b in
               (events[i:i + batch] for i in range(0, len(events), batch))]
    out = {}
    for mode in ("sequences", "waves"):
        model = make_model("liquid", seed=0)
        prev: dict[str, Any] = {}
        t0 = time.perf_counter()
        for xs in batches:
            labels: list[tuple[Any, float] | None] = []  # what each sample labels
            for x in xs:
                labels.append((prev[x.key], x.last) if x.key in prev else None)
                prev[x.key] = x
            if mode == "sequences":
                done = [lab for lab in labels if lab is not None]
                model.predict_learn_sequences(xs, [x for x, _ in done], [y for _, y in done])
                continue
            for wave in waves([x.key for x in xs]):
                done = [labels[i] for i in wave if labels[i] is not None]
                model.learn_many([x for x, _ in done], [y for _, y in done])  # type: ignore
                model.predict_many([xs[i] for i in wave])
        out[mode] = len(events) / (time.perf_counter() - t0)
    return out


def embedded_run(drift: bool, sequences: bool) -> dict[str, float]:
    """The embedded default ``streamadapt run`` in this process (as the command runs it:
    encode, decode, pipeline, sinks, the HTTP endpoints on a free port), with the forecast
    batches as sequences or as waves; its events/s, seconds and prequential MAE."""
    import contextlib
    import io

    import connectors.commands.run as run_cmd
    from connectors.cli import main as cli

    got: dict[str, Any] = {}
    table = run_cmd.summary_table

    def keep(summary: Any, *a: Any, **k: Any) -> Any:
        got["summary"] = summary
        return table(summary, *a, **k)

    run_cmd.summary_table = keep
    Pipeline.forecast_sequences = sequences
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            cli(["run", "--no-progress", "--http-port", "0", *([] if drift else ["--no-drift"])])
    finally:
        run_cmd.summary_table = table
        Pipeline.forecast_sequences = True
    s = got["summary"]
    return {"events_per_second": s.events_per_second, "seconds": s.seconds,
            "mae": s.metrics()["mae"], "events": s.events}


def embedded(repeats: int = 1) -> dict[str, Any]:
    """:func:`embedded_run` with the drift monitor on (the default) and off, sequences and
    waves back to back; the best of ``repeats`` runs' speed (the MAE does not vary)."""
    out: dict[str, Any] = {}
    for drift in (True, False):
        for sequences in (True, False):
            runs = [embedded_run(drift, sequences) for _ in range(repeats)]
            best = max(runs, key=lambda r: r["events_per_second"])
            out[f"{'drift' if drift else 'no-drift'}/{'sequences' if sequences else 'waves'}"] \
                = best
    return out


def embedded_verdicts(emb: dict[str, Any]) -> list[str]:
    """The embedded run's goal (50k events/s with the default settings, drift on) and the
    tolerance of the sequence path (MAE within 1 % of the waves')."""
    lines = []
    for drift in ("drift", "no-drift"):
        seq, wav = emb[f"{drift}/sequences"], emb[f"{drift}/waves"]
        gap = (seq["mae"] - wav["mae"]) / wav["mae"] * 100
        goal = "met" if seq["events_per_second"] >= 50_000 else "MISSED"
        lines.append(
            f"embedded run, drift monitor {'on' if drift == 'drift' else 'off'}: "
            f"{seq['events_per_second']:,.0f} ev/s as sequences (MAE {seq['mae']:.4f}) vs "
            f"{wav['events_per_second']:,.0f} ev/s as waves (MAE {wav['mae']:.4f}); "
            + (f"goal >= 50k ev/s: {goal}; " if drift == "drift" else "")
            + f"MAE {gap:+.2f}% vs waves (tolerance 1%: "
            f"{'within' if abs(gap) <= 1.0 else 'OUTSIDE'})")
    return lines


def _agg(runs: list[dict[str, Any]], name: str, key: str) -> tuple[float, float]:
    vals = np.array([r["models"][name][key] for r in runs], dtype=float)
    return float(vals.mean()), float(vals.std())


def summarise(results: dict[str, list[dict[str, Any]]], names: Sequence[str]
              ) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for sev, runs in results.items():
        table[sev] = {}
        for n in names:
            row = {k: _agg(runs, n, k) for k in ("rmse", "post_rmse", "mape", "ttc_steps")}
            row["converged"] = sum(r["models"][n]["converged"] for r in runs)
            row["runs"] = len(runs)
            table[sev][n] = row
    return table


def verdicts(table: dict[str, dict[str, Any]]) -> list[str]:
    """The issue's goals, checked against the measured table."""
    lines = []
    inc = [n for n in table["drastic"] if n.startswith("mlp-incremental")]
    for sev in SEVERITIES:
        if sev not in table or "liquid" not in table[sev] or not inc:
            continue
        t = table[sev]
        best_inc = min(inc, key=lambda n: t[n]["rmse"][0])
        best = min(t, key=lambda n: t[n]["rmse"][0])
        liq, bi = t["liquid"], t[best_inc]
        beats = liq["rmse"][0] < bi["rmse"][0] and liq["mape"][0] < bi["mape"][0]
        lines.append(
            f"{sev}: liquid RMSE {liq['rmse'][0]:.3f} MAPE {liq['mape'][0]:.2f}% TTC "
            f"{liq['ttc_steps'][0]:.0f} vs best incremental ({best_inc}) RMSE "
            f"{bi['rmse'][0]:.3f} MAPE {bi['mape'][0]:.2f}% TTC {bi['ttc_steps'][0]:.0f}: "
            f"liquid {'BEATS' if beats else 'DOES NOT BEAT'} incremental learning; "
            f"best RMSE overall: {best}")
    return lines


def print_tables(table: dict[str, dict[str, Any]], bank: dict[str, Any] | None,
                 tput: dict[str, Any] | None, seq_tput: dict[str, float] | None = None,
                 emb: dict[str, Any] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=140)
    for sev, rows in table.items():
        tab = Table(title=f"link load, {sev} failure (mean ± std over seeds)")
        for col in ("model", "RMSE", "RMSE after failure", "MAPE %", "TTC steps", "conv"):
            tab.add_column(col, justify="right" if col != "model" else "left")
        for n, r in rows.items():
            tab.add_row(n, *(f"{r[k][0]:.3f} ± {r[k][1]:.3f}" for k in ("rmse", "post_rmse")),
                        f"{r['mape'][0]:.2f} ± {r['mape'][1]:.2f}",
                        f"{r['ttc_steps'][0]:.0f} ± {r['ttc_steps'][1]:.0f}",
                        f"{r['converged']}/{r['runs']}")
        console.print(tab)
    if bank:
        tab = Table(title="fpp3/bank_calls (one series, prequential)")
        for col in ("model", "RMSE", "MAE", "MAPE %"):
            tab.add_column(col)
        for n, r in bank.items():
            tab.add_row(n, f"{r['rmse']:.2f}", f"{r['mae']:.2f}", f"{r['mape']:.2f}")
        console.print(tab)
    if tput:
        tab = Table(title="throughput, one core, micro-batches of 256 links (events/s)")
        for col in ("model", "predict", "predict+learn"):
            tab.add_column(col)
        for n, r in tput.items():
            tab.add_row(n, f"{r['predict']:,.0f}", f"{r['predict+learn']:,.0f}")
        console.print(tab)
    if seq_tput:
        tab = Table(title="liquid, predict+learn, micro-batches of 256 Abilene samples "
                    "(14 links), one core (events/s)")
        for col in ("sequences", "waves"):
            tab.add_column(col)
        tab.add_row(f"{seq_tput['sequences']:,.0f}", f"{seq_tput['waves']:,.0f}")
        console.print(tab)
    if emb:
        tab = Table(title="embedded `streamadapt run` (27,000 Abilene events)")
        for col in ("drift monitor / path", "events/s", "seconds", "MAE"):
            tab.add_column(col)
        for k, r in emb.items():
            tab.add_row(k, f"{r['events_per_second']:,.0f}", f"{r['seconds']:.2f}",
                        f"{r['mae']:.4f}")
        console.print(tab)


def plot(results: dict[str, list[dict[str, Any]]], names: Sequence[str], out: Path,
         window: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results), 4.5), squeeze=False)
    for ax, (sev, runs) in zip(axes[0], results.items(), strict=True):
        run = runs[0]
        fail = run["failure"]["step"]
        lo, hi = max(0, fail - 144), fail + 288
        for n in names:
            err = np.asarray(run["models"][n]["step_mape"], dtype=float)
            c = np.convolve(np.nan_to_num(err), np.ones(window) / window)[: len(err)]
            ax.plot(np.arange(lo, hi) - fail, c[lo:hi], label=n, lw=1.6 if n == "liquid" else 1)
        ax.axvline(0, color="k", ls="--", lw=0.8)
        ax.set_title(f"{sev} failure of {run['failure']['link']} (seed 0)")
        ax.set_xlabel("steps after the failure (5 min each)")
        ax.set_ylabel(f"trailing MAPE % (mean of {window} steps)")
        ax.set_yscale("log")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = out / "linkload_rolling.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="out", help="folder for JSON and PNG results")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2000, help="measurement rounds per run")
    ap.add_argument("--topology", default="abilene")
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--pre-steps", type=int, default=288)
    ap.add_argument("--conv-window", type=int, default=12)
    ap.add_argument("--tol", type=float, default=0.10)
    ap.add_argument("--bank-limit", type=int, default=None)
    ap.add_argument("--no-bank", action="store_true")
    ap.add_argument("--no-throughput", action="store_true")
    ap.add_argument("--no-embedded", action="store_true",
                    help="skip the embedded `streamadapt run` (sequences vs waves)")
    ap.add_argument("--embedded-repeats", type=int, default=1,
                    help="runs per embedded configuration (the fastest is kept)")
    ap.add_argument("--quick", action="store_true", help="1 seed, 1200 steps, 6000 calls")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.bank_limit = 1, 1200, args.bank_limit or 6000
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from rich.progress import Progress

    results: dict[str, list[dict[str, Any]]] = {s: [] for s in SEVERITIES}
    t0 = time.perf_counter()
    with Progress() as prog:
        task = prog.add_task("scenarios", total=len(SEVERITIES) * args.seeds + 3)
        for sev in SEVERITIES:
            for seed in range(args.seeds):
                results[sev].append(run_scenario(sev, seed, args))
                prog.advance(task)
        bank = None if args.no_bank else bank_calls(args)
        prog.advance(task)
        tput = None if args.no_throughput else throughput(
            [n for n in ("liquid", "liquid-ltc", "mlp-incremental-b256", "river-linear",
                         "river-snarimax") if n in args.models or n == "liquid-ltc"])
        seq_tput = None if args.no_throughput else throughput_sequences()
        prog.advance(task)
        emb = None if args.no_embedded else embedded(args.embedded_repeats)
        prog.advance(task)
    table = summarise(results, args.models)
    print_tables(table, bank, tput, seq_tput, emb)
    notes = verdicts(table)
    if emb:
        notes += embedded_verdicts(emb)
    if tput and "liquid" in tput:
        lq = tput["liquid"]
        notes.append(f"liquid throughput: {lq['predict']:,.0f} ev/s predict-only (goal 50k: "
                     f"{'met' if lq['predict'] >= 50_000 else 'MISSED'}), "
                     f"{lq['predict+learn']:,.0f} ev/s predict+learn (goal 20k: "
                     f"{'met' if lq['predict+learn'] >= 20_000 else 'MISSED'})")
    for line in notes:
        print(line)
    plot(results, args.models, out, args.conv_window)
    for runs in results.values():
        for r in runs:
            for m in r["models"].values():
                m.pop("step_mape")
    payload = {"args": vars(args), "table": table, "runs": results, "bank_calls": bank,
               "throughput": tput, "throughput_sequences": seq_tput, "embedded": emb,
               "verdicts": notes, "torch_threads": 1,
               "wall_seconds": time.perf_counter() - t0}
    (out / "linkload.json").write_text(json.dumps(payload, indent=1, default=float))
    print(f"wrote {out / 'linkload.json'} and {out / 'linkload_rolling.png'} "
          f"in {payload['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
