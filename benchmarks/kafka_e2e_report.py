"""The table, target checks, JSON and PNG plots of ``benchmarks/kafka_e2e.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

console = Console()


def report(results: dict[str, Any], clients: list[str], own_models: list[str], out: Path
           ) -> None:
    rates = results["rates"]
    table = Table(title="Kafka end to end through tansu (loopback, one process, 1 torch thread)")
    for col in ("stage", "events", "events/s", "vs (a) same client", "vs (b)"):
        table.add_column(col, justify="right" if col != "stage" else "left")
    b = rates["(b) river per-event loop, kafka-python"]["events_per_s"]
    for name, r in rates.items():
        client = name.rsplit(", ", 1)[1]
        a = rates.get(f"(a) raw consume+produce, {client}", {}).get("events_per_s")
        table.add_row(name, f"{r['events']:,}", f"{r['events_per_s']:,.0f}",
                      f"{r['events_per_s'] / a:.0%}" if a else "-",
                      f"{r['events_per_s'] / b:.1f}x")
    console.print(table)
    lt = Table(title="end-to-end latency of (c) at half of its maximum rate")
    for col in ("client", "rate ev/s", "matched", "p50 ms", "p99 ms", "max ms"):
        lt.add_column(col, justify="right")
    for client, r in results["latency"].items():
        lt.add_row(client, f"{r['rate_events_per_s']:,.0f}", f"{r['matched']:,}",
                   f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['max_ms']:.1f}")
    console.print(lt)
    rss = results["rss"]
    console.print(
        f"RSS over {rss['events']:,} events, {rss['client']}: start {rss['rss_start_mb']:.0f} MB,"
        f" after warm-up (20%) {rss['rss_after_warmup_mb']:.0f} MB, end {rss['rss_end_mb']:.0f}"
        f" MB, growth after warm-up {rss['growth_after_warmup_mb']:+.1f} MB"
    )
    targets = []
    if "kafka-python" in clients:
        c = rates["(c) streamadapt river-linear, kafka-python"]["events_per_s"]
        a = rates["(a) raw consume+produce, kafka-python"]["events_per_s"]
        targets.append(("kafka-python: (c) >= 80% of (a)", c / a >= 0.8, f"{c / a:.0%}"))
    if "confluent-kafka" in clients:
        c = rates["(c) streamadapt river-linear, confluent-kafka"]["events_per_s"]
        targets.append(("confluent-kafka: (c) >= 5x (b)", c / b >= 5, f"{c / b:.1f}x"))
    for client, r in results["latency"].items():
        targets.append((f"{client}: p99 < 100 ms at half load", r["p99_ms"] < 100,
                        f"{r['p99_ms']:.1f} ms"))
    growth = rss["growth_after_warmup_mb"]
    flat = growth < max(0.05 * rss["rss_after_warmup_mb"], 20.0)
    targets.append(("RSS flat after warm-up (< 5% or 20 MB growth)", flat, f"{growth:+.1f} MB"))
    tt = Table(title="targets")
    for col in ("target", "met", "measured"):
        tt.add_column(col)
    for name, ok, val in targets:
        tt.add_row(name, "[green]yes[/green]" if ok else "[red]NO[/red]", val)
    console.print(tt)
    results["targets"] = [{"target": n, "met": bool(ok), "measured": v} for n, ok, v in targets]
    (out / "kafka_e2e.json").write_text(json.dumps(results, indent=2, default=float))
    plots(results, out)
    console.print(f"results: {out / 'kafka_e2e.json'}, plots: {out}/kafka_e2e_*.png")


def plots(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = results["rates"]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rates) + 1.5))
    names = list(rates)
    ax.barh(names, [rates[n]["events_per_s"] for n in names], color="tab:blue")
    ax.invert_yaxis()
    ax.set_xlabel("events/s")
    ax.set_title("throughput through tansu on loopback")
    fig.tight_layout()
    fig.savefig(out / "kafka_e2e_throughput.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    for client, r in results["latency"].items():
        lat = np.sort(np.asarray(r["latencies_ms"]))
        if len(lat):
            ax.plot(lat, np.arange(1, len(lat) + 1) / len(lat), label=client)
    ax.set_xscale("log")
    ax.set_xlabel("produce-to-prediction latency (ms)")
    ax.set_ylabel("fraction of events")
    ax.set_title("end-to-end latency at half load, (c)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "kafka_e2e_latency.png", dpi=120)
    plt.close(fig)
    rss = results["rss"]
    fig, ax = plt.subplots(figsize=(7, 4))
    s = np.asarray(rss["samples"], dtype=float)
    ax.plot(s[:, 0], s[:, 1], marker=".")
    ax.set_xlabel("events served")
    ax.set_ylabel("RSS (MB)")
    ax.set_title(f"service RSS, (c), {rss['client']}")
    fig.tight_layout()
    fig.savefig(out / "kafka_e2e_rss.png", dpi=120)
    plt.close(fig)
