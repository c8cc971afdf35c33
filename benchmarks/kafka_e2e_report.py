"""The table, goal checks, JSON and PNG plots of ``benchmarks/kafka_e2e.py``."""

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
    lt = Table(title="end-to-end latency of (c) at half of its maximum rate "
                     "(input CreateTime to prediction CreateTime, after a 10% warm-up)")
    for col in ("client", "rate ev/s", "records", "matched", "p50 ms", "p99 ms", "max ms"):
        lt.add_column(col, justify="right")
    for client, r in results["latency"].items():
        lt.add_row(client, f"{r['rate_events_per_s']:,.0f}", f"{r['events']:,}",
                   f"{r['matched']:,}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
                   f"{r['max_ms']:.1f}")
        if not r.get("valid", True):
            console.print(f"[red]latency of {client} not measured: {r['reason']}[/red]")
    console.print(lt)
    rss = results.get("rss") or {}
    if rss:
        console.print(
            f"RSS over {rss['events']:,} events, {rss['client']}: start "
            f"{rss['rss_start_mb']:.0f} MB, after warm-up (20%) {rss['rss_after_warmup_mb']:.0f}"
            f" MB, end {rss['rss_end_mb']:.0f} MB, growth after warm-up "
            f"{rss['growth_after_warmup_mb']:+.1f} MB"
        )
    targets = goals(results, clients)
    tt = Table(title="goals")
    for col in ("goal", "met", "measured"):
        tt.add_column(col)
    shown = {True: "[green]yes[/green]", False: "[red]NO[/red]", None: "not measured"}
    for name, ok, val in targets:
        tt.add_row(name, shown[ok], val)
    console.print(tt)
    results["targets"] = [{"target": n, "met": ok, "measured": v} for n, ok, v in targets]
    (out / "kafka_e2e.json").write_text(json.dumps(results, indent=2, default=float))
    plots(results, out)
    console.print(f"results: {out / 'kafka_e2e.json'}, plots: {out}/kafka_e2e_*.png")


#: The goals the report checks: (c) through kafka-python against its client's ceiling,
#: p99 latency at half load, RSS growth over this many events.
KAFKA_PYTHON_SHARE = 0.70
P99_MS = 100.0
RSS_EVENTS = 1_000_000


def goals(results: dict[str, Any], clients: list[str]) -> list[tuple[str, bool | None, str]]:
    """(goal, met, measured) of a run; ``met`` is None where the run did not measure it."""
    rates = results["rates"]
    out: list[tuple[str, bool | None, str]] = []
    if "kafka-python" in clients:
        c = rates["(c) streamadapt river-linear, kafka-python"]["events_per_s"]
        a = rates["(a) raw consume+produce, kafka-python"]["events_per_s"]
        out.append((f"kafka-python: (c) river-linear >= {KAFKA_PYTHON_SHARE:.0%} of (a)",
                    c / a >= KAFKA_PYTHON_SHARE, f"{c / a:.0%} ({c:,.0f} of {a:,.0f} ev/s)"))
    for client in clients:
        r = results["latency"].get(client)
        name = f"{client}: p99 < {P99_MS:g} ms at half load"
        if r is None or not r.get("valid", True):
            out.append((name, None, r["reason"] if r else "no latency run"))
        else:
            out.append((name, r["p99_ms"] < P99_MS,
                        f"p99 {r['p99_ms']:.1f} ms over {r.get('measured', r['matched']):,} "
                        f"records at {r['rate_events_per_s']:,.0f} ev/s"))
    rss = results.get("rss") or {}
    name = f"RSS flat over {RSS_EVENTS:,} events (growth after 20% < 5% or 20 MB)"
    if not rss:
        out.append((name, None, "no RSS run (--rss-events 0)"))
    else:
        growth = rss["growth_after_warmup_mb"]
        flat = growth < max(0.05 * rss["rss_after_warmup_mb"], 20.0)
        text = f"{growth:+.1f} MB over {rss['events']:,} events"
        out.append((name, flat if rss["events"] >= RSS_EVENTS else None,
                    text if rss["events"] >= RSS_EVENTS else text + " (too few to tell)"))
    if "confluent-kafka" in clients:  # an earlier goal, kept for comparison
        b = rates["(b) river per-event loop, kafka-python"]["events_per_s"]
        c = rates["(c) streamadapt river-linear, confluent-kafka"]["events_per_s"]
        out.append(("confluent-kafka: (c) >= 5x (b) (earlier goal)", c / b >= 5,
                    f"{c / b:.1f}x"))
    return out


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
    rss = results.get("rss") or {}
    if not rss.get("samples"):
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    s = np.asarray(rss["samples"], dtype=float)
    ax.plot(s[:, 0], s[:, 1], marker=".")
    ax.set_xlabel("events served")
    ax.set_ylabel("RSS (MB)")
    ax.set_title(f"service RSS, (c), {rss['client']}")
    fig.tight_layout()
    fig.savefig(out / "kafka_e2e_rss.png", dpi=120)
    plt.close(fig)
