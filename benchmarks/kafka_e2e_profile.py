"""Profile of the service loop through Kafka: where an event's time goes.

Fills a topic of the embedded tansu broker with link-load samples, serves them with
``streamadapt`` end to end (stage (c) of ``benchmarks/kafka_e2e.py``) under cProfile, and
prints the top entries by own time; the group join before the first batch is left out::

    python benchmarks/kafka_e2e_profile.py [--events 30000] [--client kafka-python]
        [--model river-linear] [--top 25] [--sort tottime]

It prints each stage's share of the loop (cumulative time under the profiler), then the
top entries.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from typing import Any

import torch
from kafka_e2e import CLIENTS, fill, service_run, stream_records

from connectors.broker import EmbeddedBroker


def profile_service(bootstrap: str, n: int, client: str, model: str, batch: int, tag: str
                    ) -> tuple[dict[str, Any], cProfile.Profile]:
    """Serve ``n`` records of ``bench-in`` and profile the loop from its first batch on."""
    prof = cProfile.Profile()
    state = {"on": False}

    def first_batch(summary: Any) -> None:
        if not state["on"]:
            state["on"] = True
            prof.enable()

    try:
        result = service_run(bootstrap, "bench-in", f"prof-out-{tag}", n, client, model,
                             batch, on_batch=first_batch)
    finally:
        prof.disable()
    return result, prof


def top(prof: cProfile.Profile, sort: str, limit: int) -> str:
    """The ``limit`` top entries of ``prof`` sorted by ``sort``, as pstats prints them."""
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats(sort).print_stats(limit)
    text = buf.getvalue()
    return text[text.find("   ncalls"):] if "   ncalls" in text else text


#: The loop's stages: (stage, file suffix, function names), cumulative times summed.
STAGES = (
    ("poll (source)", "connectors/kafka/", ("poll",)),
    ("decode", "streamadapt/events.py", ("decode_many",)),
    ("pipeline step", "streamadapt/pipeline.py", ("step",)),
    ("produce (sink add)", "connectors/kafka/", ("add",)),
    ("flush (wait for acks)", "streamadapt/service.py", ("_deliver",)),
    ("checkpoint", "streamadapt/service.py", ("_maybe_checkpoint",)),
    ("commit", "streamadapt/service.py", ("_commit",)),
)


def stages(prof: cProfile.Profile) -> list[tuple[str, float, float]]:
    """(stage, seconds, share of ``run_once``) of the profiled loop; "the rest" is what
    ``run_once`` spends itself (routing, offsets, metrics)."""
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    total = sum(v[3] for (f, _, n), v in raw.items()
                if f.endswith("streamadapt/service.py") and n == "run_once")
    out: list[tuple[str, float, float]] = []
    for name, where, funcs in STAGES:
        t = sum(v[3] for (f, _, n), v in raw.items() if where in f and n in funcs)
        if name == "decode" and t == 0:  # a loop that decodes record by record
            t = sum(v[3] for (f, _, n), v in raw.items()
                    if f.endswith("streamadapt/events.py") and n == "decode_one")
        out.append((name, t, t / total if total else 0.0))
    rest = total - sum(t for _, t, _ in out)
    out.append(("the rest of run_once", rest, rest / total if total else 0.0))
    out.append(("run_once", total, 1.0))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=30_000)
    ap.add_argument("--client", choices=CLIENTS, default="kafka-python")
    ap.add_argument("--model", default="river-linear")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--sort", default="tottime", choices=("tottime", "cumulative"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with EmbeddedBroker() as broker:
        fill(broker.bootstrap, "bench-in", stream_records(args.events), args.partitions)
        t = time.perf_counter()
        result, prof = profile_service(broker.bootstrap, args.events, args.client, args.model,
                                       args.batch_size, tag="p")
        wall = time.perf_counter() - t
    print(f"{args.client}, {args.model}: {result['events']:,} events, "
          f"{result['events_per_s']:,.0f} ev/s under the profiler ({wall:.1f} s in all)")
    for name, t, share in stages(prof):
        print(f"{name:24s} {t:7.3f} s {share:6.1%}")
    print(top(prof, args.sort, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
