"""Diagrams of the lot chart, drawn from the chart's own definition. Pure text, no I/O.

The library can render ``f"{LotChart:mermaid}"`` itself, but for this chart it draws the
64 ``sync_status`` edges (any state -> any state) that drown the business transitions, and
leaves out the refusals and the same-state transitions (prolong, promote). So the chart is
introspected here instead: business transitions are edges, same-state transitions are
self-loops, refusals become a note per state, and ``sync_status`` one note.
``dot()`` is built the same way: the library's DOT output needs ``pydot``, which is not a
dependency of this project.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import RuleViolation
from .lot_chart import LotChart

_SYNC = "sync_status"
_SYNC_NOTE = "sync_status(target): any state, sold included, to any (Koban is the authority)"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    label: str


@dataclass(frozen=True)
class Refusal:
    state: str
    event: str
    code: str


def _refusal_code(validator: str) -> str | None:
    """The code a ``refuse_*`` validator always raises (it ignores its arguments)."""
    if not validator.startswith("refuse_"):
        return None
    try:
        getattr(LotChart, validator)(None)
    except RuleViolation as violation:
        return violation.code.value
    return None  # pragma: no cover - a refuse_* validator always raises


def _names(grouper: Any) -> list[tuple[str, bool]]:
    return [(str(spec.func), spec.expected_value is not False) for spec in grouper]


def extract() -> tuple[list[Edge], list[Refusal]]:
    """Business edges and refusals of the chart, in document order."""
    edges: list[Edge] = []
    refusals: list[Refusal] = []
    for state in LotChart.states_map.values():
        for transition in state.transitions:
            if transition.initial:
                continue
            events = [str(event) for event in transition.events]
            if _SYNC in events:
                continue
            validators = [name for name, _ in _names(transition.validators)]
            codes = [code for code in map(_refusal_code, validators) if code]
            if codes:
                refusals.extend(Refusal(state.id, event, codes[0]) for event in events)
                continue
            guards = [
                name if positive else f"not {name}" for name, positive in _names(transition.cond)
            ]
            label = " ".join(events)
            if guards:
                label += f" [{' and '.join(guards)}]"
            if validators:
                label += f" / {', '.join(validators)}"
            for target in transition.targets:
                edges.append(Edge(state.id, target.id, label))
    return edges, refusals


def _refusal_lines(refusals: list[Refusal], state: str, prefix: str = "") -> list[str]:
    return [f"{prefix}{r.event} refused: {r.code}" for r in refusals if r.state == state]


def mermaid() -> str:
    """The lot chart as a Mermaid ``stateDiagram-v2``."""
    edges, refusals = extract()
    out = ["stateDiagram-v2", "    direction LR", "    [*] --> free"]
    for state in LotChart.states:
        if state.states:
            out.append(f"    state {state.id} {{")
            initial = next(child for child in state.states if child.initial)
            out.append(f"        [*] --> {initial.id}")
            inner = {child.id for child in state.states}
            out.extend(
                f"        {e.source} --> {e.target} : {e.label}"
                for e in edges
                if e.source in inner and e.target in inner
            )
            out.append("    }")
    nested = {child.id for state in LotChart.states for child in state.states}
    out.extend(
        f"    {e.source} --> {e.target} : {e.label}"
        for e in edges
        if not (e.source in nested and e.target in nested)
    )
    for state in LotChart.states:
        lines = _refusal_lines(refusals, state.id)
        for child in state.states:
            lines += _refusal_lines(refusals, child.id, prefix=f"in {child.id}, ")
        if state.id == "sold":
            lines.append(_SYNC_NOTE)
        if lines:
            out.append(f"    note right of {state.id}")
            out.extend(f"        {line}" for line in lines)
            out.append("    end note")
    return "\n".join(out) + "\n"


def _quote(*lines: str) -> str:
    """A DOT string: quotes escaped, lines joined with DOT's ``\\n``."""
    return '"' + "\\n".join(line.replace('"', '\\"') for line in lines) + '"'


def dot() -> str:
    """The lot chart as Graphviz DOT source (render with ``dot -Tsvg``)."""
    edges, refusals = extract()
    compound = {state.id: state for state in LotChart.states if state.states}

    def anchor(state_id: str) -> str:
        # Graphviz edges join nodes: a compound state is drawn through its initial child.
        if state_id in compound:
            return next(str(child.id) for child in compound[state_id].states if child.initial)
        return state_id

    def node(state_id: str, indent: str) -> str:
        lines = [state_id, *_refusal_lines(refusals, state_id)]
        if state_id == "sold":
            lines.append(_SYNC_NOTE)
        return f"{indent}{state_id} [label={_quote(*lines)}];"

    out = [
        "digraph LotChart {",
        "    compound=true;",
        "    rankdir=LR;",
        '    node [shape=box, style=rounded, fontname="Helvetica"];',
        '    edge [fontname="Helvetica", fontsize=10];',
        '    __start__ [shape=point, label=""];',
    ]
    for state in LotChart.states:
        if state.id in compound:
            out.append(f"    subgraph cluster_{state.id} {{")
            lines = [state.id, *_refusal_lines(refusals, state.id)]
            out.append(f"        label={_quote(*lines)};")
            out.append("        style=rounded;")
            for child in state.states:
                out.append(node(child.id, "        "))
            out.append("    }")
        else:
            out.append(node(state.id, "    "))
    out.append(f"    __start__ -> {anchor(str(LotChart.initial_state.id))};")
    for e in edges:
        attrs = [f"label={_quote(e.label)}"]
        if e.source in compound:
            attrs.append(f"ltail=cluster_{e.source}")
        if e.target in compound:
            attrs.append(f"lhead=cluster_{e.target}")
        out.append(f"    {anchor(e.source)} -> {anchor(e.target)} [{', '.join(attrs)}];")
    out.append("}")
    return "\n".join(out) + "\n"
