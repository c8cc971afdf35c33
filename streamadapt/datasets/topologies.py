"""Backbone topologies for the link-load scenario: two real research networks and a seeded
random one.

Each topology is plain data: node names with an economic weight (used for gravity-style
demand magnitudes) and undirected links with a routing weight. ``abilene`` is the Internet2
Abilene backbone (11 PoPs, 14 links, as in the Abilene traffic-matrix data sets);
``nsfnet`` is the 14-node, 21-link NSFNET T1 backbone as used throughout the optical
networking literature. Node weights are the rounded metropolitan populations (millions) of
the PoP cities, a stand-in for the paper's "economic/demographic factors". Routing weights
are 1 (hop count), so shortest paths are minimum-hop paths.

``random`` builds a ring over ``n_nodes`` nodes plus random chords: a ring is
2-edge-connected, so any single link failure leaves every node pair routable.

>>> t = get_topology("abilene")
>>> len(t.nodes), len(t.links)
(11, 14)
>>> get_topology("nsfnet").graph().number_of_edges()
21
>>> r = get_topology("random", seed=3, n_nodes=8)
>>> len(r.nodes), len(r.links) >= 8
(8, True)
>>> get_topology("euro28")
Traceback (most recent call last):
...
ValueError: unknown topology 'euro28'; valid choices: abilene, nsfnet, random
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np

__all__ = ["Topology", "TOPOLOGIES", "get_topology", "random_topology", "link_id"]


def link_id(u: str, v: str) -> str:
    """The id of the undirected link between ``u`` and ``v`` (names sorted, joined by -)."""
    a, b = sorted((u, v))
    return f"{a}-{b}"


@dataclass(frozen=True)
class Topology:
    """An undirected backbone: nodes with demand weights, links with routing weights."""

    name: str
    #: Node name -> economic weight (gravity-model mass), all > 0.
    nodes: dict[str, float]
    #: Undirected links ``(u, v, weight)``.
    links: tuple[tuple[str, str, float], ...]

    def __post_init__(self) -> None:
        for u, v, w in self.links:
            for n in (u, v):
                if n not in self.nodes:
                    raise ValueError(f"link {u}-{v} names unknown node {n!r}")
            if u == v or w <= 0:
                raise ValueError(f"bad link {u}-{v} with weight {w}")
        ids = [link_id(u, v) for u, v, _ in self.links]
        if len(set(ids)) != len(ids):
            raise ValueError(f"topology {self.name!r} lists a link twice")

    @property
    def link_ids(self) -> list[str]:
        return [link_id(u, v) for u, v, _ in self.links]

    def graph(self) -> nx.Graph:
        """The topology as a networkx graph (``weight`` on edges, ``mass`` on nodes)."""
        g = nx.Graph()
        for n, m in self.nodes.items():
            g.add_node(n, mass=m)
        for u, v, w in self.links:
            g.add_edge(u, v, weight=w, id=link_id(u, v))
        return g


ABILENE = Topology(
    "abilene",
    {
        "ATLA": 6.1, "CHIN": 9.5, "DNVR": 2.9, "HSTN": 7.1, "IPLS": 2.1, "KSCY": 2.2,
        "LOSA": 13.2, "NYCM": 19.8, "SNVA": 2.0, "STTL": 4.0, "WASH": 6.3,
    },
    tuple((u, v, 1.0) for u, v in [
        ("STTL", "SNVA"), ("STTL", "DNVR"), ("SNVA", "LOSA"), ("SNVA", "DNVR"),
        ("LOSA", "HSTN"), ("DNVR", "KSCY"), ("KSCY", "HSTN"), ("KSCY", "IPLS"),
        ("HSTN", "ATLA"), ("IPLS", "CHIN"), ("IPLS", "ATLA"), ("CHIN", "NYCM"),
        ("NYCM", "WASH"), ("WASH", "ATLA"),
    ]),
)

NSFNET = Topology(
    "nsfnet",
    {
        "Seattle": 4.0, "PaloAlto": 2.0, "SanDiego": 3.3, "SaltLakeCity": 1.3,
        "Boulder": 0.3, "Houston": 7.1, "Lincoln": 0.3, "Champaign": 0.2,
        "Pittsburgh": 2.4, "Atlanta": 6.1, "AnnArbor": 0.4, "Ithaca": 0.1,
        "Princeton": 0.4, "CollegePark": 6.3,
    },
    tuple((u, v, 1.0) for u, v in [
        ("Seattle", "PaloAlto"), ("Seattle", "SanDiego"), ("Seattle", "Champaign"),
        ("PaloAlto", "SanDiego"), ("PaloAlto", "SaltLakeCity"), ("SanDiego", "Houston"),
        ("SaltLakeCity", "Boulder"), ("SaltLakeCity", "AnnArbor"), ("Boulder", "Houston"),
        ("Boulder", "Lincoln"), ("Houston", "Atlanta"), ("Houston", "CollegePark"),
        ("Lincoln", "Champaign"), ("Champaign", "Pittsburgh"), ("Pittsburgh", "Atlanta"),
        ("Pittsburgh", "Ithaca"), ("Pittsburgh", "Princeton"), ("AnnArbor", "Ithaca"),
        ("AnnArbor", "Princeton"), ("Ithaca", "CollegePark"), ("Princeton", "CollegePark"),
    ]),
)


def random_topology(n_nodes: int = 12, extra_links: int | None = None, seed: int = 0) -> Topology:
    """A ring of ``n_nodes`` nodes plus ``extra_links`` random chords (default ``n_nodes//2``).

    Node masses are log-normal (a few large cities, many small ones). The ring keeps the
    graph 2-edge-connected, so one failed link never disconnects it.
    """
    if n_nodes < 3:
        raise ValueError(f"n_nodes must be >= 3 for a ring, got {n_nodes}")
    rng = np.random.default_rng(seed)
    names = [f"N{i:02d}" for i in range(n_nodes)]
    masses = np.round(np.exp(rng.normal(1.0, 0.8, n_nodes)), 2) + 0.1
    pairs = {tuple(sorted((names[i], names[(i + 1) % n_nodes]))) for i in range(n_nodes)}
    links = [(names[i], names[(i + 1) % n_nodes], 1.0) for i in range(n_nodes)]
    want = n_nodes // 2 if extra_links is None else extra_links
    possible = n_nodes * (n_nodes - 1) // 2 - n_nodes
    want = min(want, possible)
    while want > 0:
        i, j = rng.choice(n_nodes, 2, replace=False)
        pair = tuple(sorted((names[i], names[j])))
        if pair not in pairs:
            pairs.add(pair)
            links.append((names[i], names[j], 1.0))
            want -= 1
    return Topology("random", dict(zip(names, masses.tolist(), strict=True)), tuple(links))


TOPOLOGIES: dict[str, Topology | None] = {"abilene": ABILENE, "nsfnet": NSFNET, "random": None}


def get_topology(name: str, seed: int = 0, n_nodes: int = 12) -> Topology:
    """A topology by name; ``seed`` and ``n_nodes`` matter only for ``"random"``."""
    if name not in TOPOLOGIES:
        raise ValueError(f"unknown topology {name!r}; valid choices: {', '.join(TOPOLOGIES)}")
    topo = TOPOLOGIES[name]
    return topo if topo is not None else random_topology(n_nodes, seed=seed)
