"""The status graph: declared once with ``transitions``, compiled to a table.

The declaration is a single ``transitions.Machine`` with no model.  It exists
so the graph is written in the vocabulary people know and so ``orderfsm graph``
can draw it; nothing per order ever touches it (``add_model`` scans a list and
costs kilobytes per model).  At import time the declaration is validated and
compiled into :data:`TABLE`, which the hot path reads with two dict look-ups.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import attrs
from transitions import Machine, State

from orderfsm.core.records import Advanced, Conflict, Duplicate, Outcome, Stale
from orderfsm.core.status import FINAL_STATUSES, Status
from orderfsm.errors import InvalidGraph

DECLARATION = Machine(
    model=None,
    states=[State(s.value, final=s in FINAL_STATUSES) for s in Status],
    # Xsolla's "Order life cycle" (xsolla.md §1).  A ``canceled`` seen right
    # after ``new`` is an advance that skips ``paid``: only a paid order can be
    # refunded, so no edge says otherwise.
    transitions=[
        {"trigger": "pay", "source": ["new", "expired"], "dest": "paid"},
        {"trigger": "expire", "source": "new", "dest": "expired"},
        {"trigger": "deliver", "source": "paid", "dest": "done"},
        {"trigger": "refund", "source": ["paid", "done"], "dest": "canceled"},
    ],
    initial="new",
    auto_transitions=False,
)


@attrs.frozen
class Edge:
    trigger: str
    source: Status
    dest: Status


@attrs.frozen
class Graph:
    """The declaration reduced to plain data."""

    initial: Status
    finals: frozenset[Status]
    edges: tuple[Edge, ...]

    def successors(self, status: Status) -> list[Status]:
        return [e.dest for e in self.edges if e.source is status]


def read_declaration(machine: Machine) -> Graph:
    """Extract states, final marks and edges from a ``transitions.Machine``."""
    edges = [
        Edge(name, Status(t.source), Status(t.dest))
        for name, event in machine.events.items()
        for transitions in event.transitions.values()
        for t in transitions
    ]
    finals = frozenset(Status(s.name) for s in machine.states.values() if s.final)
    return Graph(initial=Status(machine.initial), finals=finals, edges=tuple(edges))


def validate(graph: Graph, states: Iterable[Status] = tuple(Status)) -> None:
    """Reject a graph that cannot describe an order's life.

    The rules python-statemachine enforces (one initial state, no way out of
    a final state, every state reachable, no non-final dead end, since an
    order stuck there could never finish) plus one of ours: no cycles, so that
    "forward" and "stale" can never both describe the same observation.
    """
    states = tuple(states)
    if graph.initial not in states:
        raise InvalidGraph(f"initial state {graph.initial} is not declared")
    for edge in graph.edges:
        if edge.source in graph.finals:
            raise InvalidGraph(f"final state {edge.source} has an outgoing edge to {edge.dest}")
    for edge in graph.edges:
        if edge.source in reachable_from(graph, edge.dest):
            raise InvalidGraph(f"cycle through {edge.source} -> {edge.dest}: status could go back")
    reachable = reachable_from(graph, graph.initial)
    unreachable = [s for s in states if s not in reachable]
    if unreachable:
        raise InvalidGraph(f"unreachable states: {', '.join(map(str, unreachable))}")
    dead_ends = [s for s in states if s not in graph.finals and not graph.successors(s)]
    if dead_ends:
        raise InvalidGraph(f"non-final states with no way out: {', '.join(map(str, dead_ends))}")


def reachable_from(graph: Graph, start: Status) -> dict[Status, tuple[Status, ...]]:
    """Breadth-first: each reachable state with the shortest path of states before it."""
    paths: dict[Status, tuple[Status, ...]] = {start: ()}
    queue = deque([start])
    while queue:
        here = queue.popleft()
        for there in graph.successors(here):
            if there not in paths:
                paths[there] = (*paths[here], here)
                queue.append(there)
    return paths


# ``None`` as a current status means nothing has been observed yet.
Table = dict["Status | None", dict[str, Outcome]]


def compile_table(graph: Graph) -> Table:
    """Decide every (current, observed) pair once, ahead of time.

    Forward along the graph is an advance (listing the statuses jumped over);
    the same status is a duplicate; a status that could have come before the
    current one is stale; anything else contradicts what is known: a conflict.
    Rows are keyed by the status string, which a ``Status`` member also
    matches, so raw wire values need no conversion.
    """
    forward = {s: reachable_from(graph, s) for s in Status}
    table: Table = {}
    for current in Status:
        row: dict[str, Outcome] = {}
        for observed in Status:
            if observed is current:
                row[observed.value] = Duplicate(observed)
            elif observed in forward[current]:
                row[observed.value] = Advanced(current, observed, forward[current][observed][1:])
            elif current in forward[observed]:
                row[observed.value] = Stale(current, observed)
            else:
                row[observed.value] = Conflict(current, observed)
        table[current] = row
    from_start = forward[graph.initial]
    table[None] = {s.value: Advanced(None, s, from_start[s]) for s in Status}
    return table


GRAPH = read_declaration(DECLARATION)
validate(GRAPH)
TABLE = compile_table(GRAPH)


def mermaid(graph: Graph = GRAPH) -> str:
    """The state diagram in Mermaid, generated from the declaration itself."""
    lines = ["stateDiagram-v2", f"    [*] --> {graph.initial}"]
    lines += [f"    {e.source} --> {e.dest} : {e.trigger}" for e in graph.edges]
    lines += [f"    {s} --> [*]" for s in Status if s in graph.finals]
    return "\n".join(lines) + "\n"
