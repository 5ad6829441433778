"""Every transport reads an order id the same way (orderfsm.core.order_id_of)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from orderfsm.core import order_id_of
from orderfsm.core.ids import MAX_ORDER_ID


@given(st.integers(1, MAX_ORDER_ID))
def test_an_id_reads_the_same_as_a_number_or_as_its_digits(order_id: int) -> None:
    assert order_id_of(order_id) == order_id_of(str(order_id)) == order_id


@given(st.integers() | st.text() | st.floats() | st.booleans() | st.none())
def test_anything_else_is_no_id_and_nothing_raises(value: object) -> None:
    """Never an exception (int() raises on "²" and on 5,000 digits), never a number
    a BIGINT column cannot hold, never zero or negative."""
    read = order_id_of(value)
    assert read is None or (type(read) is int and 0 < read <= MAX_ORDER_ID)
    if read is not None:
        assert str(read) == str(value).lstrip("0") or read == value
