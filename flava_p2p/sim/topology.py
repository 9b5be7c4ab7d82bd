"""Communication graphs for simulations (networkx), as neighbour lists per node.

Graphs that come out disconnected are redrawn with the next seed (up to 100 times) so that a
"sparse topology" experiment measures sparsity, not an accidental island.
"""

from __future__ import annotations

import networkx as nx

from flava_p2p.errors import FlavaError
from flava_p2p.sim.scenario import Topology

STATIC = {"complete", "ring", "regular", "erdos_renyi", "watts_strogatz", "barabasi_albert"}


def build_graph(topo: Topology, n: int, seed: int) -> nx.Graph:
    """The static graph for ``topo`` (one of :data:`STATIC`). ``dynamic`` and ``discovered``
    have none: their views come from peer sampling."""
    if topo.kind not in STATIC:
        raise ValueError(f"topology {topo.kind} is not a static graph")
    if topo.kind == "complete":
        return nx.complete_graph(n)
    if topo.kind == "ring":
        return nx.cycle_graph(n)
    for attempt in range(100):
        s = seed + attempt
        if topo.kind == "regular":
            if topo.degree >= n or (topo.degree * n) % 2:
                raise FlavaError(
                    f"topology regular: degree {topo.degree} with {n} nodes is impossible "
                    f"(need degree < nodes and degree × nodes even)."
                )
            g = nx.random_regular_graph(topo.degree, n, seed=s)
        elif topo.kind == "erdos_renyi":
            g = nx.erdos_renyi_graph(n, topo.p, seed=s)
        elif topo.kind == "watts_strogatz":
            g = nx.watts_strogatz_graph(n, max(2, topo.degree), topo.p, seed=s)
        else:
            if topo.m >= n:
                raise FlavaError(f"topology barabasi_albert: m={topo.m} must be < nodes ({n}).")
            g = nx.barabasi_albert_graph(n, topo.m, seed=s)
        if nx.is_connected(g):
            return g
    raise FlavaError(
        f"topology {topo.kind}: no connected graph in 100 draws with these parameters; "
        f"raise p/degree/m."
    )


def neighbours(g: nx.Graph) -> list[list[int]]:
    """Sorted neighbour list of every node."""
    return [sorted(int(j) for j in g.neighbors(i)) for i in range(g.number_of_nodes())]
