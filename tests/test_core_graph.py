"""The declaration is validated at load time and drawn from the same data."""

from __future__ import annotations

import subprocess
import sys

import pytest
from transitions import Machine, State

from orderfsm.core.graph import GRAPH, mermaid, read_declaration, validate
from orderfsm.core.status import Status
from orderfsm.errors import InvalidGraph


def machine(transitions: list[list[str]], finals: set[str], initial: str = "new") -> Machine:
    return Machine(
        model=None,
        states=[State(s.value, final=s.value in finals) for s in Status],
        transitions=transitions,
        initial=initial,
        auto_transitions=False,
    )


GOOD = [
    ["pay", "new", "paid"],
    ["deliver", "paid", "done"],
    ["refund", "done", "canceled"],
    ["expire", "new", "expired"],
    ["pay", "expired", "paid"],
]
FINALS = {"canceled"}


def test_the_shipped_graph_is_the_documented_one() -> None:
    """Xsolla's "Order life cycle" page, as xsolla.md §1 quotes it."""
    edges = {(e.source.value, e.dest.value) for e in GRAPH.edges}
    assert edges == {
        ("new", "paid"),
        ("new", "expired"),
        ("expired", "paid"),
        ("paid", "done"),
        ("paid", "canceled"),
        ("done", "canceled"),
    }
    assert GRAPH.initial is Status.NEW
    assert GRAPH.finals == {Status.CANCELED}


def test_a_good_variant_validates() -> None:
    validate(read_declaration(machine(GOOD, FINALS)))


@pytest.mark.parametrize(
    ("transitions", "finals", "message"),
    [
        ([*GOOD, ["reopen", "canceled", "new"]], FINALS, "final state canceled"),
        ([t for t in GOOD if t[2] != "expired"], FINALS, "unreachable states: expired"),
        (GOOD, set(), "no way out: canceled"),
        ([*GOOD, ["unpay", "paid", "new"]], FINALS, "cycle"),
    ],
)
def test_bad_graphs_are_rejected(
    transitions: list[list[str]], finals: set[str], message: str
) -> None:
    with pytest.raises(InvalidGraph, match=message):
        validate(read_declaration(machine(transitions, finals)))


def test_mermaid_lists_every_edge_and_final_state() -> None:
    text = mermaid()
    assert text.startswith("stateDiagram-v2\n    [*] --> new\n")
    for edge in GRAPH.edges:
        assert f"    {edge.source} --> {edge.dest} : {edge.trigger}\n" in text
    for final in GRAPH.finals:
        assert f"    {final} --> [*]\n" in text


def test_cli_graph_prints_the_same_diagram() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "orderfsm", "graph"], capture_output=True, text=True, check=True
    )
    assert result.stdout == mermaid()
