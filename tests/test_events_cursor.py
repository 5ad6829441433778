"""The sans-io Event API cursor and page parser, driven with plain numbers."""

from __future__ import annotations

import email.utils
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orderfsm.core import Position, Status
from orderfsm.errors import ServiceUnavailable, TokenRejected
from orderfsm.interface import Health
from transports.events import (
    EventCursor,
    EventsConfig,
    Fail,
    Finish,
    InvalidEventsAnswer,
    RefreshToken,
    Step,
    Wait,
    parse_page,
)
from transports.http import HttpResponse, RequestTimeout
from transports.polling import ServerError, TokenProviderFailed, UnexpectedAnswer

ORDER = 656
OTHER = 657


def event(event_id: Any, order_id: Any = ORDER, kind: Any = "order_paid") -> dict[str, Any]:
    data = {"notification_type": kind, "order": {"id": order_id, "status": "paid"}, "items": []}
    return {
        "id": event_id,
        "status": "new",
        "created_at": "2026-11-24T10:00:00+00:00",
        "data": data,
    }


def page(*events: Any) -> HttpResponse:
    body = json.dumps({"events": list(events)}).encode()
    return HttpResponse(200, {"Content-Type": "application/json"}, body)


def error(status: int, headers: dict[str, str] | None = None) -> HttpResponse:
    body = json.dumps({"statusCode": status, "errorCode": 1, "errorMessage": f"e{status}"})
    return HttpResponse(status, headers or {}, body.encode())


def cursor(**config: Any) -> EventCursor:
    config.setdefault("jitter", 0.0)
    return EventCursor(ORDER, EventsConfig(**config), lambda: 0.5, project_id=12345)


def started(**config: Any) -> EventCursor:
    c = cursor(**config)
    c.start(0.0)
    return c


def statuses(step: Step) -> list[Status]:
    return [o.status for o in step.observations]


def test_start_reports_connecting_and_asks_from_the_start_of_history() -> None:
    c = cursor(first_delay=0.5)
    step = c.start(10.0)
    assert step.next == Wait(10.5)
    assert step.health is not None and step.health.health is Health.CONNECTING
    assert step.health.source == "events"
    assert c.query() == {
        "after_id": "0",
        "types": "order_paid,order_canceled",
        "project_id": "12345",
    }
    quiet = EventCursor(ORDER, EventsConfig(types=(), send_project_id=False, start_after=42), float)
    assert quiet.query() == {"after_id": "42"}


def test_the_orders_events_become_observations_and_the_cursor_moves_past_everything() -> None:
    c = started(interval=3.0)
    step = c.on_response(page(event(5), event(6, OTHER), event(7, OTHER, "order_canceled")), 1.0)
    assert statuses(step) == [Status.PAID]
    [paid] = step.observations
    assert paid.order_id == ORDER and paid.source == "events" and paid.at == 1.0
    assert paid.position == Position(event_id=5)
    assert paid.raw == event(5)
    assert c.after_id == 7 and c.query()["after_id"] == "7"
    assert step.next == Wait(4.0)
    assert step.health is not None and step.health.health is Health.HEALTHY
    quiet = c.on_response(page(), 4.0)
    assert quiet.observations == () and quiet.health is None and quiet.next == Wait(7.0)


def test_a_final_status_finishes_and_the_cursor_refuses_more() -> None:
    c = started()
    step = c.on_response(page(event(1), event(2, kind="order_canceled"), event(3)), 1.0)
    assert statuses(step) == [Status.PAID, Status.CANCELED]
    assert isinstance(step.next, Finish) and step.next.observation.status is Status.CANCELED
    assert step.health is not None and step.health.health is Health.STOPPED
    with pytest.raises(RuntimeError):
        c.on_response(page(), 2.0)


def test_repeated_ids_are_reported_once_and_late_lower_ids_still_count() -> None:
    c = started()
    first = c.on_response(page(event(9), event(9), event(4, OTHER)), 1.0)
    assert [o.position for o in first.observations] == [Position(event_id=9)]
    again = c.on_response(page(event(9), event(8)), 2.0)  # 8 arrives late, below the cursor
    assert [o.position for o in again.observations] == [Position(event_id=8)]
    assert c.after_id == 9


def test_a_page_is_read_in_id_order() -> None:
    c = started()
    step = c.on_response(page(event(12, kind="order_canceled"), event(11)), 1.0)
    assert statuses(step) == [Status.PAID, Status.CANCELED]


def test_unknown_notifications_and_bad_entries_are_skipped_with_warnings() -> None:
    c = started()
    step = c.on_response(
        page(
            "junk",
            {"id": "x"},
            {"id": -3, "data": {}},
            {"id": True, "data": {}},
            event(20, kind="order_refunded"),
            {"id": 21, "data": "not an object"},
            event(22, order_id="656"),  # a digit string is read leniently
        ),
        1.0,
    )
    assert [o.position for o in step.observations] == [Position(event_id=22)]
    assert len(step.warnings) == 5
    assert any("order_refunded" in w for w in step.warnings)
    assert c.after_id == 22


@pytest.mark.parametrize(
    "body", [b"not json", b"[]", b'{"events": {}}', b'{"data": []}', b"\xff", b""]
)
def test_a_malformed_page_is_a_passing_failure(body: bytes) -> None:
    c = started(interval=1.0)
    step = c.on_response(HttpResponse(200, {}, body), 5.0)
    assert step.next == Wait(6.0)
    assert step.health is not None and step.health.health is Health.DEGRADED
    assert isinstance(step.health.error, InvalidEventsAnswer)
    good = c.on_response(page(event(1)), 6.0)
    assert good.health is not None and good.health.health is Health.HEALTHY


def test_429_honours_retry_after() -> None:
    c = started(interval=1.0)
    step = c.on_response(error(429, {"Retry-After": "7"}), 2.0)
    assert step.next == Wait(9.0)
    assert step.health is not None and step.health.health is Health.DEGRADED
    assert isinstance(step.health.error, ServerError) and step.health.error.status == 429


def test_server_errors_back_off_doubling_up_to_the_cap_and_recover() -> None:
    c = started(interval=1.0, backoff_max=5.0)
    waits = []
    now = 0.0
    for status in (500, 502, 503, 504, 500):
        step = c.on_response(error(status), now)
        assert isinstance(step.next, Wait)
        waits.append(step.next.until - now)
        now = step.next.until
    assert waits == [1.0, 2.0, 4.0, 5.0, 5.0]
    recovered = c.on_response(page(), now)
    assert recovered.next == Wait(now + 1.0)
    after = c.on_response(error(500), now + 1.0)
    assert after.next == Wait(now + 2.0)  # the count started again


def test_no_answer_is_a_passing_failure() -> None:
    c = started(interval=1.0)
    step = c.on_error(RequestTimeout("slow"), 3.0)
    assert step.next == Wait(4.0)
    assert step.health is not None and isinstance(step.health.error, RequestTimeout)


def test_give_up_after_turns_a_long_outage_into_service_unavailable() -> None:
    c = started(interval=1.0, give_up_after=10.0)
    assert isinstance(c.on_response(error(503), 0.0).next, Wait)
    step = c.on_response(error(503), 10.0)
    assert isinstance(step.next, Fail) and isinstance(step.next.error, ServiceUnavailable)
    assert step.health is not None and step.health.health is Health.FAILED


@pytest.mark.parametrize("status", [401, 403])
def test_a_rejected_token_is_refreshed_once_then_fails(status: int) -> None:
    c = started()
    assert c.on_response(error(status), 1.0).next == RefreshToken()
    step = c.on_response(error(status), 1.1)
    assert isinstance(step.next, Fail) and isinstance(step.next.error, TokenRejected)
    assert step.health is not None and step.health.health is Health.FAILED


def test_a_refresh_that_works_allows_a_later_refresh() -> None:
    c = started()
    assert c.on_response(error(401), 1.0).next == RefreshToken()
    assert isinstance(c.on_response(page(), 1.1).next, Wait)
    assert c.on_response(error(401), 5.0).next == RefreshToken()


def test_a_failing_token_provider_is_backed_off_then_given_up_like_an_outage() -> None:
    """The application's token service blinks too: one failure must not end the
    reading for good; one lasting ``give_up_after`` does, as a 5xx would."""
    c = started(interval=1.0, give_up_after=2.0)
    step = c.on_token_error(LookupError("vault down"), 0.0)
    assert isinstance(step.next, Wait) and step.health is not None
    assert step.health.health is Health.DEGRADED
    step = c.on_token_error(LookupError("vault down"), 3.0)
    assert isinstance(step.next, Fail) and isinstance(step.next.error, ServiceUnavailable)
    assert isinstance(step.next.error.__cause__, TokenProviderFailed)
    assert isinstance(step.next.error.__cause__.__cause__, LookupError)


@pytest.mark.parametrize("status", [400, 404, 405, 302])
def test_an_answer_with_no_rule_fails_at_once(status: int) -> None:
    step = started().on_response(error(status), 1.0)
    assert isinstance(step.next, Fail) and isinstance(step.next.error, UnexpectedAnswer)
    assert step.next.error.status == status


def test_a_full_page_is_followed_at_once_and_is_not_yet_healthy() -> None:
    c = started(page_size=3, interval=2.0)
    full = c.on_response(page(event(1, OTHER), event(2, OTHER), event(3)), 1.0)
    assert full.next == Wait(1.0) and full.health is None
    assert statuses(full) == [Status.PAID]
    rest = c.on_response(page(event(4, OTHER)), 1.2)
    assert rest.next == Wait(3.2)
    assert rest.health is not None and rest.health.health is Health.HEALTHY


def test_mark_processed_acknowledges_only_the_orders_news() -> None:
    step = started(mark_processed=True).on_response(
        page(event(1), event(2, OTHER), event(3, kind="order_refunded")), 1.0
    )
    assert step.acknowledge == (1,)
    assert started().on_response(page(event(1)), 1.0).acknowledge == ()


def test_config_is_validated() -> None:
    for bad in (
        {"interval": 0},
        {"jitter": 1.0},
        {"first_delay": -1},
        {"page_size": 0},
        {"start_after": -1},
        {"dedupe_window": 0},
        {"give_up_after": float("nan")},
    ):
        with pytest.raises(ValueError):
            EventsConfig(**bad)


def test_parse_page_keeps_raw_entries_and_counts_skipped_ones() -> None:
    parsed = parse_page(json.dumps({"events": [event(2), "junk", event(1)]}))
    assert [e.event_id for e in parsed.events] == [1, 2]
    assert parsed.events[0].raw == event(1) and parsed.size == 3
    with pytest.raises(InvalidEventsAnswer):
        parse_page(b'{"events": null}')


KINDS = ["order_paid", "order_paid", "order_canceled", "order_refunded", "payment"]
"""Weighted so that a final (``order_canceled``) turns up in most runs, but not at once."""


@st.composite
def served_pages(draw: st.DrawFn) -> tuple[int, list[list[tuple[int, int, str]]]]:
    """A dedupe window of a few ids, and pages that go far past it.

    Ids run to 60 against a window of 1-8, so repeats of ids the window has
    long forgotten are the common case; an id always names the same event.
    """
    window = draw(st.integers(min_value=1, max_value=8))
    ids = st.integers(min_value=1, max_value=60)
    kind_of: dict[int, tuple[int, str]] = {}

    def entry(event_id: int) -> tuple[int, int, str]:
        if event_id not in kind_of:
            kind_of[event_id] = (
                draw(st.sampled_from([ORDER, OTHER])),
                draw(st.sampled_from(KINDS)),
            )
        return (event_id, *kind_of[event_id])

    pages = [
        [entry(i) for i in draw(st.lists(ids, max_size=10))]
        for _ in range(draw(st.integers(min_value=0, max_value=10)))
    ]
    return window, pages


@settings(max_examples=300)
@given(served_pages())
def test_every_event_of_the_order_is_reported_exactly_once(
    served: tuple[int, list[list[tuple[int, int, str]]]],
) -> None:
    """Whatever the server repeats, reorders or mixes in, even long after the
    dedupe window forgot an id, no event is reported twice; every news event
    above the cursor is reported, in id order; the first final ends it all
    (reported last, in ``Finish``, nothing after it); the cursor never moves back.

    Breakages this catches: forgetting an id past the window and reporting its
    repeat again; dropping the dedupe; reading on past a final; a page read out
    of id order.
    """
    window, pages = served
    c = started(dedupe_window=window, page_size=1000)
    reported: list[int] = []
    finished = False
    for number, entries_ in enumerate(pages):
        cursor_before = c.after_id
        step = c.on_response(page(*[event(i, o, k) for i, o, k in entries_]), float(number))
        ids = [o.position.event_id for o in step.observations if o.position is not None]
        assert len(ids) == len(step.observations) and ids == sorted(ids)
        assert all(o.order_id == ORDER for o in step.observations)
        assert not set(ids) & set(reported), f"reported again: {set(ids) & set(reported)}"
        reported += [i for i in ids if i is not None]
        news = {
            (i, k)
            for i, o, k in entries_
            if o == ORDER and k in ("order_paid", "order_canceled") and i > cursor_before
        }
        finishes = isinstance(step.next, Finish)
        # A final above the cursor always ends the reading (a late one below may end it first).
        assert finishes or all(k == "order_paid" for _, k in news)
        stop = ids[-1] if finishes and ids else None
        expected_here = {i for i, _ in news if stop is None or i <= stop}
        assert expected_here <= set(ids), (
            f"news above the cursor missed: {expected_here - set(ids)}"
        )
        assert c.after_id >= cursor_before
        if finishes:
            assert step.observations[-1].status is Status.CANCELED
            assert step.next.observation == step.observations[-1]
            finished = True
            break
        assert all(o.status is Status.PAID for o in step.observations)
    if finished:
        with pytest.raises(RuntimeError):
            c.on_response(page(), 99.0)


def test_a_repeat_the_window_has_forgotten_is_not_reported_again() -> None:
    """Regression: once ``dedupe_window`` newer ids pushed an id out of memory,
    a server repeating it had it reported a second time."""
    c = started(dedupe_window=2, page_size=1000)
    first = c.on_response(page(event(1), event(2, OTHER), event(3, OTHER)), 1.0)
    assert [o.position for o in first.observations] == [Position(event_id=1)]
    again = c.on_response(page(event(1), event(4)), 2.0)
    assert [o.position for o in again.observations] == [Position(event_id=4)]
    assert c.after_id == 4


def test_the_dedupe_memory_is_bounded() -> None:
    c = started(dedupe_window=10, page_size=1000)
    for start in range(0, 100, 20):
        c.on_response(page(*[event(i, OTHER) for i in range(start + 1, start + 21)]), 1.0)
    assert len(c._seen) == 10  # the window, not the history
    assert c.after_id == 100


# --- what the reports, warnings and errors say (the mutation run found these unchecked)


def said(step: Step) -> tuple[Health, str, float, str]:
    assert step.health is not None, step
    return step.health.health, step.health.source, step.health.at, step.health.reason


def test_each_health_report_names_the_source_the_moment_and_the_reason() -> None:
    c = cursor(interval=1.0)
    assert said(c.start(10.0)) == (Health.CONNECTING, "events", 10.0, "reading the Event API")
    assert said(c.on_response(page(), 11.0)) == (
        Health.HEALTHY,
        "events",
        11.0,
        "Event API answered",
    )
    assert said(c.on_response(error(503), 12.0))[:3] == (Health.DEGRADED, "events", 12.0)
    final = c.on_response(page(event(1, kind="order_canceled")), 13.0)
    assert said(final) == (Health.STOPPED, "events", 13.0, "final status canceled")


def test_the_last_page_and_a_full_page_keep_their_warnings_and_acknowledgements() -> None:
    """The driver logs every warning and marks every acknowledged id, whichever
    way the page ends: following a backlog, or finishing."""
    c = started(page_size=3, mark_processed=True)
    full = c.on_response(page("junk", event(1), event(2, OTHER)), 1.0)
    assert full.next == Wait(1.0)
    assert len(full.warnings) == 1 and full.acknowledge == (1,)
    final = c.on_response(page({"id": "x"}, event(3, kind="order_canceled")), 2.0)
    assert isinstance(final.next, Finish)
    assert len(final.warnings) == 1 and final.acknowledge == (3,)


def test_project_id_is_sent_only_when_asked_for() -> None:
    c = EventCursor(ORDER, EventsConfig(send_project_id=False), float, project_id=12345)
    assert "project_id" not in c.query()


def test_429_honours_a_dated_retry_after() -> None:
    c = started(interval=1.0)
    wall = 1_800_000_000.0
    date = email.utils.formatdate(wall + 30, usegmt=True)
    step = c.on_response(error(429, {"Retry-After": date}), 5.0, wall_now=wall)
    assert step.next == Wait(35.0)


def test_errors_name_the_order_and_the_service() -> None:
    rejected = started()
    assert rejected.on_response(error(401), 1.0).next == RefreshToken()
    step = rejected.on_response(error(401), 1.5)
    assert isinstance(step.next, Fail) and f"order {ORDER}" in str(step.next.error)
    assert said(step)[:3] == (Health.FAILED, "events", 1.5)

    outage = started(interval=1.0, give_up_after=2.0)
    outage.on_response(error(503), 0.0)
    step = outage.on_response(error(503), 3.0)
    assert isinstance(step.next, Fail)
    assert f"order {ORDER}: no good Event API answer" in str(step.next.error)

    token = started().on_token_error(LookupError("vault down"), 4.0)
    assert said(token)[:3] == (Health.DEGRADED, "events", 4.0)
    assert token.health is not None and f"order {ORDER}" in token.health.reason


def test_a_finished_reader_says_so_when_used_again() -> None:
    c = started()
    c.on_response(page(event(1, kind="order_canceled")), 1.0)
    with pytest.raises(RuntimeError, match="already finished or failed"):
        c.on_response(page(), 2.0)


@pytest.mark.parametrize(
    ("bad", "field"), [({"page_size": 0}, "page_size"), ({"start_after": -1}, "start_after")]
)
def test_config_errors_name_the_field(bad: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        EventsConfig(**bad)
