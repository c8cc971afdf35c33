"""Link loads on a backbone under link failures: the scenario of the liquid-network paper.

Reproduces the setting of "Liquid Neural Network-based Adaptive Learning vs. Incremental
Learning for Link Load Prediction amid Concept Drift due to Network Failures" (arXiv
2404.05304, 2024): per node-pair demands are sums of sines, routed on shortest paths over
a backbone; a link failure re-routes the demands that crossed it, so the loads of other
links jump (abrupt concept drift).

Choices the paper leaves open, made here (all are parameters):

* Demands: every ordered node pair ``(s, d)`` has a gravity-model magnitude
  ``m_s * m_d`` (node masses from :mod:`~streamadapt.datasets.topologies`), scaled so the
  mean link load before any failure is ``mean_load``, times
  ``1 + a_d sin(2 pi t / day + p_d) + a_w sin(2 pi t / week + p_w)`` with per-pair
  amplitudes and phases, times ``1 + noise * N(0, 1)`` per step (clipped at zero).
* Links are undirected: a link's load is the sum of the demands whose path uses it, in
  either direction. Routing is minimum-weight (networkx Dijkstra).
* A failed link emits no samples while it is down; after a repair it resumes with a long
  elapsed time. Demands left with no path are dropped (their count is in ``info``).
* ``severity`` picks the failed link when the schedule does not name one: the *shift* of a
  failure is the total absolute load change it causes on the surviving links divided by
  the total load before it (at mean demands). ``"drastic"`` fails the link with the largest
  shift; ``"moderate"`` the one whose shift is closest to a quarter of that. Bridges
  (whose failure disconnects the graph) are never chosen.

>>> s = linkload_stream(seed=1, topology="abilene", n_steps=100)
>>> s.n_events == 14 * 100 - 50, s.drift_points == [50 * 300.0]
(True, True)
>>> first = next(iter(s.events))
>>> first.event_id, first.timestamp
('abilene-1-0-SNVA-STTL', 0.0)
>>> s.info["failures"][0]["link"]
'HSTN-LOSA'
>>> route_loads(get_topology("abilene"), {("STTL", "NYCM"): 1.0})["CHIN-NYCM"]
1.0
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import networkx as nx
import numpy as np
import orjson

from streamadapt.datasets import Stream
from streamadapt.datasets.topologies import Topology, get_topology, link_id
from streamadapt.events import LinkLoadSample

__all__ = ["Failure", "linkload_stream", "route_paths", "route_loads", "failure_shifts",
           "SEVERITIES"]

SEVERITIES = ("drastic", "moderate")
_DAY = 86_400.0
_WEEK = 7 * _DAY


@dataclass(frozen=True)
class Failure:
    """One link failure: ``link`` goes down at ``step`` and comes back at ``repair_step``
    (never when ``None``). ``link=None`` lets ``severity`` choose the link."""

    step: int
    link: str | None = None
    repair_step: int | None = None


Pair = tuple[str, str]


def route_paths(topology: Topology, failed: frozenset[str] | set[str] = frozenset()
                ) -> dict[Pair, list[str]]:
    """Shortest path (as link ids) of every ordered node pair with the ``failed`` links down;
    pairs with no path are absent."""
    g = topology.graph()
    g.remove_edges_from([(u, v) for u, v, _ in topology.links if link_id(u, v) in failed])
    out: dict[Pair, list[str]] = {}
    for s, paths in nx.all_pairs_dijkstra_path(g, weight="weight"):
        for d, path in paths.items():
            if s != d:
                out[(s, d)] = [link_id(a, b) for a, b in zip(path, path[1:], strict=False)]
    return out


def route_loads(topology: Topology, demands: Mapping[Pair, float],
                failed: frozenset[str] | set[str] = frozenset()) -> dict[str, float]:
    """Load of every link when ``demands`` are routed with the ``failed`` links down.

    Failed links carry 0; demands with no path are dropped.
    """
    paths = route_paths(topology, failed)
    loads = dict.fromkeys(topology.link_ids, 0.0)
    for pair, volume in demands.items():
        for lid in paths.get(pair, ()):
            loads[lid] += volume
    return loads


def _routing_matrix(topology: Topology, pairs: Sequence[Pair], failed: frozenset[str]
                    ) -> tuple[np.ndarray, int]:
    paths = route_paths(topology, failed)
    index = {lid: i for i, lid in enumerate(topology.link_ids)}
    r = np.zeros((len(index), len(pairs)))
    dropped = 0
    for j, pair in enumerate(pairs):
        path = paths.get(pair)
        if path is None:
            dropped += 1
        for lid in path or ():
            r[index[lid], j] = 1.0
    return r, dropped


def failure_shifts(topology: Topology, demands: Mapping[Pair, float]) -> dict[str, float]:
    """The shift each single-link failure causes (see the module docstring); bridges are left
    out."""
    g = topology.graph()
    bridges = {link_id(u, v) for u, v in nx.bridges(g)}
    before = route_loads(topology, demands)
    total = sum(before.values()) or 1.0
    out = {}
    for lid in topology.link_ids:
        if lid in bridges:
            continue
        after = route_loads(topology, demands, {lid})
        out[lid] = sum(abs(after[k] - before[k]) for k in before if k != lid) / total
    return out


def _pick_link(shifts: dict[str, float], severity: str, taken: set[str]) -> str:
    cands = sorted(((v, k) for k, v in shifts.items() if k not in taken and v > 0), reverse=True)
    if not cands:
        raise ValueError("no link left whose failure re-routes traffic without disconnecting")
    if severity == "drastic":
        return cands[0][1]
    target = 0.25 * cands[0][0]
    return min(cands, key=lambda c: (abs(c[0] - target), c[1]))[1]


def _normalise_failures(failures: Sequence[Failure | Mapping[str, Any]] | None, n_steps: int
                        ) -> list[Failure]:
    if failures is None:
        return [Failure(step=n_steps // 2)]
    out = []
    for f in failures:
        fail = f if isinstance(f, Failure) else Failure(**dict(f))
        if not 0 < fail.step < n_steps:
            raise ValueError(f"failure step {fail.step} outside 1..{n_steps - 1}")
        if fail.repair_step is not None and fail.repair_step <= fail.step:
            raise ValueError(f"repair_step {fail.repair_step} must be after step {fail.step}")
        out.append(fail)
    return sorted(out, key=lambda f: f.step)


class _Events:
    """Re-iterable link-load samples, built on the fly from the load matrix."""

    def __init__(self, prefix: str, link_ids: list[str], times: np.ndarray, loads: np.ndarray,
                 up: np.ndarray, limit: int | None) -> None:
        self.prefix, self.link_ids, self.times, self.loads, self.up = (
            prefix, link_ids, times, loads, up)
        self.limit = limit

    def __len__(self) -> int:
        n = int(self.up.sum())
        return n if self.limit is None else min(n, self.limit)

    def _rows(self) -> Iterator[tuple[str, str, float, float]]:
        """``(event_id, link_id, timestamp, load)`` of each sample, in stream order."""
        left = len(self)
        for step in range(self.times.shape[0]):
            times, loads, up = self.times[step], self.loads[step], self.up[step]
            for i in np.argsort(times, kind="stable").tolist():
                if not up[i]:
                    continue
                if left == 0:
                    return
                left -= 1
                lid = self.link_ids[i]
                yield f"{self.prefix}-{step}-{lid}", lid, float(times[i]), float(loads[i])

    def __iter__(self) -> Iterator[LinkLoadSample]:
        make = LinkLoadSample.model_construct
        for eid, lid, ts, load in self._rows():
            yield make(kind="link_load", event_id=eid, link_id=lid, timestamp=ts, load=load,
                       covariates={})

    def encoded(self) -> Iterator[bytes]:
        """The samples as :func:`~streamadapt.events.encode` writes them (the same bytes),
        without building the events first: the embedded run's source."""
        dumps = orjson.dumps
        for eid, lid, ts, load in self._rows():
            yield dumps({"kind": "link_load", "event_id": eid, "link_id": lid,
                         "timestamp": ts, "load": load, "covariates": {}})


def linkload_stream(
    seed: int = 0,
    topology: str | Topology = "abilene",
    n_steps: int = 2000,
    step_s: float = 300.0,
    failures: Sequence[Failure | Mapping[str, Any]] | None = None,
    severity: str = "drastic",
    mean_load: float = 100.0,
    noise: float = 0.05,
    jitter: float = 0.0,
    start_time: float = 0.0,
    n_nodes: int = 12,
    limit: int | None = None,
) -> Stream:
    """The link-load failure scenario as a :class:`~streamadapt.datasets.Stream`.

    Parameters
    ----------
    seed
        Seeds the demands, the noise, the jitter and the ``random`` topology.
    topology
        ``"abilene"``, ``"nsfnet"``, ``"random"`` or a :class:`Topology`.
    n_steps
        Measurement rounds; every link that is up emits one sample per round.
    step_s
        Seconds between rounds.
    failures
        The failure schedule (:class:`Failure` or mappings with the same fields). ``None``:
        one failure at ``n_steps // 2``, link chosen by ``severity``, never repaired.
    severity
        ``"drastic"`` or ``"moderate"``: how the link of a failure without one is chosen.
    mean_load
        Mean link load before any failure.
    noise
        Relative per-step noise of each demand.
    jitter
        Timestamp jitter, a fraction of ``step_s`` in ``[0, 0.5)``: irregular spacing.
    start_time
        Unix time of the first round (0 is a Thursday midnight UTC).
    n_nodes
        Node count of the ``random`` topology.
    limit
        Stop after this many events.
    """
    if severity not in SEVERITIES:
        raise ValueError(f"unknown severity {severity!r}; valid choices: {', '.join(SEVERITIES)}")
    if n_steps < 2:
        raise ValueError(f"n_steps must be >= 2, got {n_steps}")
    if step_s <= 0 or not math.isfinite(step_s):
        raise ValueError(f"step_s must be a positive number, got {step_s}")
    if not 0.0 <= jitter < 0.5:
        raise ValueError(f"jitter must be in [0, 0.5), got {jitter}")
    if noise < 0 or mean_load <= 0:
        raise ValueError(f"need noise >= 0 and mean_load > 0, got {noise}, {mean_load}")
    topo = topology if isinstance(topology, Topology) else get_topology(topology, seed, n_nodes)
    rng = np.random.default_rng(seed)
    names = list(topo.nodes)
    pairs = [(s, d) for s in names for d in names if s != d]
    mass = np.array([topo.nodes[s] * topo.nodes[d] for s, d in pairs])
    r0, _ = _routing_matrix(topo, pairs, frozenset())
    base_loads = r0 @ mass
    mass *= mean_load / max(base_loads.mean(), 1e-12)
    base = dict(zip(pairs, mass.tolist(), strict=True))

    # demand profiles: (n_steps, n_pairs)
    t = start_time + step_s * np.arange(n_steps)
    n_pairs = len(pairs)
    a_d, a_w = rng.uniform(0.3, 0.6, n_pairs), rng.uniform(0.05, 0.2, n_pairs)
    p_d = rng.normal(-math.pi / 2, 0.4, n_pairs)
    p_w = rng.uniform(0, 2 * math.pi, n_pairs)
    prof = (1 + a_d * np.sin(2 * math.pi * t[:, None] / _DAY + p_d)
            + a_w * np.sin(2 * math.pi * t[:, None] / _WEEK + p_w))
    demand = np.clip(mass * prof * (1 + noise * rng.standard_normal((n_steps, n_pairs))), 0, None)

    # failure schedule -> per-step set of down links
    shifts = failure_shifts(topo, base)
    sched = _normalise_failures(failures, n_steps)
    resolved: list[dict[str, Any]] = []
    taken: set[str] = set()
    for f in sched:
        if f.link is None:
            lid = _pick_link(shifts, severity, taken)
        else:
            ends = f.link.split("-", 1)
            lid = link_id(ends[0], ends[-1])
        if lid not in topo.link_ids:
            raise ValueError(f"failure names unknown link {f.link!r}; valid choices: "
                             f"{', '.join(topo.link_ids)}")
        taken.add(lid)
        resolved.append({**asdict(f), "link": lid, "shift": shifts.get(lid, float("nan")),
                         "time": float(t[f.step]),
                         "repair_time": None if f.repair_step is None
                         else float(t[min(f.repair_step, n_steps - 1)])})
    down_at = np.zeros((n_steps, len(topo.link_ids)), dtype=bool)
    index = {lid: i for i, lid in enumerate(topo.link_ids)}
    for f in resolved:
        end = n_steps if f["repair_step"] is None else min(f["repair_step"], n_steps)
        down_at[f["step"]:end, index[f["link"]]] = True

    loads = np.empty((n_steps, len(index)))
    cache: dict[bytes, tuple[np.ndarray, int]] = {}
    dropped: dict[str, int] = {}
    for step in range(n_steps):
        key = down_at[step].tobytes()
        if key not in cache:
            failed = frozenset(lid for lid, i in index.items() if down_at[step, i])
            cache[key] = _routing_matrix(topo, pairs, failed)
            dropped[",".join(sorted(failed))] = cache[key][1]
        loads[step] = cache[key][0] @ demand[step]

    times = np.repeat(t[:, None], len(index), axis=1)
    if jitter > 0:
        times = times + rng.uniform(-jitter, jitter, times.shape) * step_s
    drift = sorted({f["time"] for f in resolved}
                   | {f["repair_time"] for f in resolved if f["repair_time"] is not None})
    events = _Events(f"{topo.name}-{seed}", topo.link_ids, times, loads, ~down_at, limit)
    info = {
        "topology": topo.name,
        "nodes": dict(topo.nodes),
        "links": topo.link_ids,
        "failures": resolved,
        "severity": severity,
        "step_s": step_s,
        "n_steps": n_steps,
        "seed": seed,
        "dropped_demands": dropped,
    }
    return Stream(name=f"linkload-{topo.name}", task="forecast", events=events,
                  drift_points=drift, n_events=len(events), info=info)
