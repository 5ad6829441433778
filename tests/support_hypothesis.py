"""Hypothesis strategies shared by the tests that feed hostile input to a parser.

Every parser of outside input (Centrifuge frames, Get order bodies, the
emulator's commands) is fed "any JSON"; one strategy keeps them fed the same
way, so a value shape found to matter for one reaches all of them.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st


def json_values(
    keys: st.SearchStrategy[str] | None = None,
    *,
    text_size: int = 5,
    floats: bool = False,
    max_size: int = 3,
    max_leaves: int = 8,
) -> st.SearchStrategy[Any]:
    """Any JSON value: scalars, and lists and objects of them, nested.

    ``keys`` narrows object keys (a parser's own field names find its branches
    far sooner than random text); ``floats`` adds floats, NaN and infinities
    included, where a parser reads numbers.
    """
    leaves: st.SearchStrategy[Any] = (
        st.none() | st.booleans() | st.integers() | st.text(max_size=text_size)
    )
    if floats:
        leaves = leaves | st.floats()
    object_keys = st.text(max_size=8) if keys is None else keys
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=max_size)
            | st.dictionaries(object_keys, inner, max_size=max_size)
        ),
        max_leaves=max_leaves,
    )
