"""The sans-io poll decider and the Get order parser, driven with plain numbers."""

from __future__ import annotations

import email.utils
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support_hypothesis import json_values

from orderfsm.errors import OrderNotFound, ServiceUnavailable, TokenRejected
from orderfsm.interface import Health
from transports.http import HttpResponse, RequestTimeout
from transports.http.pacing import RETRY_AFTER_MAX
from transports.polling import (
    Fail,
    Finish,
    InvalidOrderAnswer,
    PollConfig,
    PollDecider,
    RefreshToken,
    ServerError,
    Step,
    TokenProviderFailed,
    UnexpectedAnswer,
    Wait,
    parse_order,
    parse_retry_after,
)

ORDER = 656


def order_body(status: str = "new", order_id: int = ORDER, **content: Any) -> bytes:
    price = {"amount": "30", "amount_without_discount": "30", "currency": "USD"}
    body = {
        "order_id": order_id,
        "status": status,
        "content": {
            "price": price,
            "is_free": False,
            "items": [
                {"sku": "com.xsolla.item_1", "quantity": 1, "is_free": "false", "price": price}
            ],
            **content,
        },
    }
    return json.dumps(body).encode()


def ok(status: str = "new", **content: Any) -> HttpResponse:
    return HttpResponse(200, {"Content-Type": "application/json"}, order_body(status, **content))


def error(status: int, headers: dict[str, str] | None = None) -> HttpResponse:
    body = json.dumps(
        {"statusCode": status, "errorCode": 9001, "errorMessage": f"[0401-9001]: e{status}"}
    )
    return HttpResponse(status, headers or {}, body.encode())


def decider(**config: Any) -> PollDecider:
    config.setdefault("interval", 3.0)
    return PollDecider(ORDER, PollConfig(**config), random=lambda: 0.5)


def wait_of(step: Step) -> float:
    assert isinstance(step.next, Wait), step
    return step.next.until


# --- the ordinary path --------------------------------------------------------


def test_start_reports_connecting_and_asks_at_once() -> None:
    d = decider(first_delay=0.5)
    step = d.start(100.0)
    assert wait_of(step) == 100.5
    assert step.health is not None and step.health.health is Health.CONNECTING


def test_statuses_are_reported_once_each_and_the_next_request_is_an_interval_later() -> None:
    d = decider()
    d.start(0.0)
    first = d.on_response(ok("new"), 1.0)
    assert first.observation is not None and first.observation.status == "new"
    assert first.observation.source == "polling" and first.observation.at == 1.0
    assert first.observation.raw.order_id == ORDER
    assert first.health is not None and first.health.health is Health.HEALTHY
    assert wait_of(first) == 4.0  # answer time + interval (jitter centred by random=0.5)

    again = d.on_response(ok("new"), 4.2)
    assert again.observation is None and again.health is None
    assert wait_of(again) == pytest.approx(7.2)

    paid = d.on_response(ok("paid"), 7.3)
    assert paid.observation is not None and paid.observation.status == "paid"


def test_a_final_status_finishes_with_the_details() -> None:
    d = decider()
    d.start(0.0)
    step = d.on_response(ok("done"), 2.0)
    assert isinstance(step.next, Finish)
    assert step.next.details.status == "done"
    assert step.next.details.items[0].sku == "com.xsolla.item_1"
    assert step.observation is not None and step.observation.status == "done"
    assert step.health is not None and step.health.health is Health.STOPPED
    with pytest.raises(RuntimeError):
        d.on_response(ok("done"), 3.0)


def test_an_unknown_status_is_reported_and_polling_goes_on() -> None:
    d = decider()
    d.start(0.0)
    step = d.on_response(ok("refunded"), 1.0)
    assert step.observation is None
    assert step.warning is not None and "refunded" in step.warning
    assert wait_of(step) == 4.0
    assert d.on_response(ok("paid"), 4.0).observation is not None


def test_jitter_stays_within_its_fraction() -> None:
    low = PollDecider(ORDER, PollConfig(interval=10, jitter=0.2), random=lambda: 0.0)
    high = PollDecider(ORDER, PollConfig(interval=10, jitter=0.2), random=lambda: 0.999999)
    low.start(0)
    high.start(0)
    assert wait_of(low.on_response(ok(), 0)) == pytest.approx(8.0)
    assert wait_of(high.on_response(ok(), 0)) == pytest.approx(12.0, abs=1e-4)


# --- errors ---------------------------------------------------------------------


def test_429_honours_retry_after_in_seconds() -> None:
    d = decider(interval=1.0)
    d.start(0.0)
    step = d.on_response(error(429, {"Retry-After": "7"}), 1.0)
    assert wait_of(step) >= 8.0
    assert step.health is not None and step.health.health is Health.DEGRADED
    assert isinstance(step.health.error, ServerError) and step.health.error.status == 429


def test_429_honours_retry_after_as_a_date() -> None:
    d = decider(interval=1.0)
    d.start(0.0)
    wall = 1_700_000_000.0
    date = email.utils.formatdate(wall + 20, usegmt=True)
    step = d.on_response(error(429, {"Retry-After": date}), 5.0, wall_now=wall)
    assert wait_of(step) >= 25.0


@pytest.mark.parametrize("retry_after", ["86400", "1e12", "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_a_retry_after_is_honoured_up_to_five_minutes(retry_after: str) -> None:
    """A day's (or a year's) Retry-After is a server's bug or a rate limiter's penalty
    box: slept out, it left the order unpolled past the tracker's ten-minute deadline
    (a paid order reported as timed out) or, with no deadline, for good.  The tracker's
    one-off checks stopped at five minutes already."""
    d = decider(interval=1.0, jitter=0.1)
    d.start(0.0)
    step = d.on_response(error(429, {"Retry-After": retry_after}), 5.0, wall_now=1.7e9)
    assert 5.0 + RETRY_AFTER_MAX <= wait_of(step) <= 5.0 + RETRY_AFTER_MAX * 1.1


def test_server_errors_back_off_doubling_up_to_the_cap_and_recover() -> None:
    d = decider(interval=1.0, backoff_max=5.0)
    d.start(0.0)
    now = 0.0
    delays = []
    reports = []
    for _ in range(5):
        step = d.on_response(error(503), now)
        delays.append(wait_of(step) - now)
        reports.append(step.health)
        now = wait_of(step)
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert reports[0] is not None and reports[0].health is Health.DEGRADED
    assert reports[1:] == [None] * 4  # reported once, not on every failure
    back = d.on_response(ok("new"), now)
    assert back.health is not None and back.health.health is Health.HEALTHY
    assert wait_of(d.on_response(error(500), now + 1)) - (now + 1) == 1.0  # back-off reset


def test_transport_errors_back_off_as_degraded() -> None:
    d = decider()
    d.start(0.0)
    step = d.on_error(RequestTimeout("slow"), 10.0)
    assert wait_of(step) == 13.0
    assert step.health is not None and step.health.health is Health.DEGRADED
    assert isinstance(step.health.error, RequestTimeout)


def test_only_the_service_saying_not_now_is_busy() -> None:
    """``Step.busy`` decides whether a first request's place among the starting orders
    is kept through its pause (``poll_order``'s ``answered``): the service's "not now"
    and no answer at all are; an order's own trouble and every good answer are not."""
    busy = {
        "429": decider().on_response(error(429, {"Retry-After": "2"}), 1.0),
        "503": decider().on_response(error(503), 1.0),
        "500": decider().on_response(error(500), 1.0),
        "timeout": decider().on_error(RequestTimeout("slow"), 1.0),
    }
    assert {name for name, step in busy.items() if not step.busy} == set()
    own = {
        "200": decider().on_response(ok("new"), 1.0),
        "404": decider().on_response(error(404), 1.0),
        "401": decider().on_response(error(401), 1.0),
        "malformed 200": decider().on_response(HttpResponse(200, {}, b"{}"), 1.0),
        "token callable": decider().on_token_error(RuntimeError("down"), 1.0),
    }
    assert {name for name, step in own.items() if step.busy} == set()


def test_give_up_after_turns_a_long_outage_into_service_unavailable() -> None:
    d = decider(interval=1.0, give_up_after=10.0)
    d.start(0.0)
    assert isinstance(d.on_response(error(502), 1.0).next, Wait)
    assert isinstance(d.on_error(RequestTimeout("x"), 6.0).next, Wait)
    step = d.on_response(error(502), 11.0)
    assert isinstance(step.next, Fail) and isinstance(step.next.error, ServiceUnavailable)
    assert step.health is not None and step.health.health is Health.FAILED


@pytest.mark.parametrize("status", [401, 403])
def test_a_rejected_token_is_refreshed_once_then_fails(status: int) -> None:
    d = decider()
    d.start(0.0)
    assert isinstance(d.on_response(error(status), 1.0).next, RefreshToken)
    step = d.on_response(error(status), 1.1)
    assert isinstance(step.next, Fail) and isinstance(step.next.error, TokenRejected)
    assert step.health is not None and step.health.health is Health.FAILED
    assert step.health.error is step.next.error


def test_a_refreshed_token_that_works_allows_a_later_refresh() -> None:
    d = decider()
    d.start(0.0)
    assert isinstance(d.on_response(error(401), 1.0).next, RefreshToken)
    assert isinstance(d.on_response(ok(), 1.1).next, Wait)
    assert isinstance(d.on_response(error(401), 4.1).next, RefreshToken)


def test_a_failing_token_provider_is_backed_off_then_named_after_five_in_a_row() -> None:
    """The application's token service blinks too: backed off like a 5xx (one failure
    used to end the order's polling for good); five in a row, as the WebSocket
    counts them, end it with the provider's own error, not a timeout much later."""
    d = decider(interval=1.0)
    d.start(0.0)
    now, waits = 0.0, 0
    while True:
        step = d.on_token_error(KeyError("no session"), now)
        if not isinstance(step.next, Wait):
            break
        waits, now = waits + 1, step.next.until
    assert waits == 4
    assert isinstance(step.next, Fail) and isinstance(step.next.error, TokenProviderFailed)
    assert "no session" in str(step.next.error)


def test_404_is_waited_out_for_the_grace_period_then_fails() -> None:
    d = decider(interval=1.0, not_found_grace=5.0)
    d.start(0.0)
    now = 0.0
    while True:
        step = d.on_response(error(404), now)
        if not isinstance(step.next, Wait):
            break
        assert step.health is None  # not a transport problem: no health change
        now = step.next.until
    assert isinstance(step.next, Fail) and isinstance(step.next.error, OrderNotFound)
    assert now >= 5.0
    assert "9001" in str(step.next.error) or "not found" in str(step.next.error)


def test_404_then_visible_resets_the_grace_period() -> None:
    d = decider(interval=1.0, not_found_grace=2.5)
    d.start(0.0)
    d.on_response(error(404), 0.0)
    d.on_response(error(404), 2.0)
    assert d.on_response(ok("new"), 3.0).observation is not None
    assert isinstance(d.on_response(error(404), 4.0).next, Wait)  # a new grace period


def test_an_answer_with_no_rule_fails_at_once() -> None:
    d = decider()
    d.start(0.0)
    step = d.on_response(error(400), 1.0)
    assert isinstance(step.next, Fail) and isinstance(step.next.error, UnexpectedAnswer)
    assert step.next.error.status == 400 and step.next.error.error_code == 9001


@pytest.mark.parametrize(
    "body",
    [
        b"<html>oops</html>",
        b"[]",
        b'{"order_id": 656}',
        order_body(order_id=657),
        b"[" * 100_000,
    ],
    ids=["html", "list", "no-status", "other-order", "deep"],
)
def test_a_malformed_200_is_a_passing_failure(body: bytes) -> None:
    d = decider()
    d.start(0.0)
    step = d.on_response(HttpResponse(200, {}, body), 1.0)
    assert isinstance(step.next, Wait)
    assert step.health is not None and step.health.health is Health.DEGRADED
    assert isinstance(step.health.error, InvalidOrderAnswer)


# --- the invariant ----------------------------------------------------------------

ANSWERS = st.one_of(
    st.sampled_from(["new", "paid", "weird"]).map(ok),
    st.sampled_from([404, 429, 500, 502, 503, 422]).map(error),
    st.integers(0, 50).map(lambda s: error(429, {"Retry-After": str(s)})),
    st.just(HttpResponse(200, {}, b"not json")),
    st.just(None),  # a timeout
)


@given(
    answers=st.lists(st.tuples(ANSWERS, st.floats(0, 5)), max_size=30),
    randoms=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=10),
    jitter=st.floats(0, 0.5),
)
def test_requests_never_come_sooner_than_the_rules_allow(
    answers: list[tuple[HttpResponse | None, float]], randoms: list[float], jitter: float
) -> None:
    """After any answer, the next request waits at least (1 - jitter) x interval, and
    never less than a Retry-After; the decider never schedules into the past."""
    source = iter(randoms * 1000)
    config = PollConfig(interval=1.0, jitter=jitter, not_found_grace=1000)
    d = PollDecider(ORDER, config, random=lambda: next(source))
    now = wait_of(d.start(0.0))
    for answer, latency in answers:
        now += latency  # the answer arrives some time after the request
        step = (
            d.on_error(RequestTimeout("t"), now) if answer is None else d.on_response(answer, now)
        )
        assert isinstance(step.next, Wait)
        assert step.next.until >= now + (1 - jitter) * config.interval - 1e-9
        if answer is not None and "retry-after" in answer.headers:
            assert step.next.until >= now + float(answer.headers["retry-after"])
        now = step.next.until


# --- parsing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"), [(True, True), (False, False), ("true", True), ("false", False)]
)
def test_is_free_is_read_as_bool_or_string(raw: object, expected: bool) -> None:
    details = parse_order(json.loads(order_body(is_free=raw)))
    assert details.is_free is expected


def test_a_full_answer_is_parsed_into_records() -> None:
    vp = {"amount": 100, "amount_without_discount": "120", "currency": "crystals"}
    details = parse_order(order_body("paid", virtual_price=vp))
    assert details.order_id == ORDER and details.status == "paid"
    assert details.known_status == "paid"
    assert details.price is not None and details.price.amount == "30"
    assert details.price.currency == "USD"
    assert details.virtual_price is not None and details.virtual_price.amount == "100"
    assert details.virtual_price.amount_without_discount == "120"
    (item,) = details.items
    assert (item.sku, item.quantity, item.is_free) == ("com.xsolla.item_1", 1, False)
    assert item.price is not None and item.price.amount_without_discount == "30"


def test_the_documented_example_parses() -> None:
    example = (
        b'{"order_id": 1, "status": "paid", "content": {"price": {"amount": "30", '
        b'"amount_without_discount": "30", "currency": "USD"}, "is_free": false, "items": '
        b'[{"sku": "com.xsolla.item_1", "quantity": 1, "is_free": false, "price": {"amount": '
        b'"30", "amount_without_discount": "30", "currency": "USD"}}]}}'
    )
    details = parse_order(example)
    assert details.order_id == 1 and details.items[0].quantity == 1


def test_an_unknown_status_still_parses() -> None:
    assert parse_order(order_body("refunded")).known_status is None


@pytest.mark.parametrize(
    "content",
    [
        {"is_free": "maybe"},
        {"items": "nope"},
        {"items": [{"quantity": 1}]},
        {"price": {"amount": "1"}},
    ],
    ids=["is_free", "items", "sku", "currency"],
)
def test_off_spec_content_leaves_the_status_readable(content: dict[str, Any]) -> None:
    """A price or an item off the documented shape empties the content and says why;
    the status is still read (before, the whole answer was refused and retried until
    the deadline: a payment hidden by a null currency)."""
    details = parse_order(order_body("paid", **content))
    assert details.known_status == "paid" and details.content_error
    assert (details.items, details.price, details.is_free) == ((), None, False)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        (" 0 ", 0.0),
        ("1.5", 1.5),
        ("-3", None),
        ("soon", None),
        (None, None),
        ("nan", None),
    ],
)
def test_retry_after_values(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, None) == expected


JSON = json_values(st.text(), text_size=12, floats=True, max_leaves=12)
ORDER_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "order_id": JSON | st.sampled_from(["²", "1" * 5000, "0", "12", "-3", " 7"]),
        "status": JSON | st.sampled_from(["paid", "done"]),
        "content": JSON
        | st.fixed_dictionaries(
            {}, optional={"items": JSON, "price": JSON, "is_free": JSON, "virtual_price": JSON}
        ),
    },
)


@given(ORDER_FIELDS)
def test_any_get_order_body_is_read_or_refused_as_an_invalid_answer(fields: Any) -> None:
    """Whatever a 200 carries, reading it gives an order or InvalidOrderAnswer: anything
    else escaped the poller and, before, the Tracker's task group (every order of every
    player failed at once on an order_id of "²")."""
    try:
        details = parse_order(fields)
    except InvalidOrderAnswer:
        return
    assert type(details.order_id) is int and details.order_id > 0


@given(st.text() | st.sampled_from(["Wed, 21 Oct 99999999999 07:28:00 GMT"]))
def test_any_retry_after_is_a_delay_or_nothing(value: str) -> None:
    """A Retry-After is a wait of 0 s or more, or ignored; never an exception (a date
    whose year overflows raised OverflowError through the poller before)."""
    delay = parse_retry_after(value, 1_800_000_000.0)
    assert delay is None or delay >= 0


def test_invalid_config_is_refused() -> None:
    with pytest.raises(ValueError):
        PollConfig(interval=0)
    with pytest.raises(ValueError):
        PollConfig(jitter=1.0)
    with pytest.raises(ValueError):
        PollConfig(give_up_after=-1)


# --- what the reports and errors say (the mutation run found these unchecked) --------


def said(step: Step) -> tuple[Health, str, float, str]:
    assert step.health is not None, step
    return step.health.health, step.health.source, step.health.at, step.health.reason


def test_each_health_report_names_the_source_the_moment_and_the_reason() -> None:
    """The demo and the CLI print these; a report timed ``None`` or from another
    source would mislead every consumer."""
    d = decider(interval=1.0)
    assert said(d.start(10.0)) == (Health.CONNECTING, "polling", 10.0, "polling Get order")
    answered = said(d.on_response(ok("new"), 11.0))
    assert answered == (Health.HEALTHY, "polling", 11.0, "Get order answered")
    busy = d.on_response(error(503), 12.0)
    assert said(busy)[:3] == (Health.DEGRADED, "polling", 12.0)
    d.on_response(ok("new"), 13.0)
    assert said(d.on_response(ok("done"), 14.0)) == (
        Health.STOPPED,
        "polling",
        14.0,
        "settled: done",
    )


def test_a_failing_token_provider_is_reported_with_its_cause_and_time() -> None:
    d = decider()
    d.start(0.0)
    cause = KeyError("no session")
    step = d.on_token_error(cause, 5.0)
    assert said(step)[:3] == (Health.DEGRADED, "polling", 5.0)
    assert isinstance(step.next, Wait) and "no session" in (
        step.health.reason if step.health else ""
    )
    assert step.health is not None and f"order {ORDER}" in step.health.reason


def test_errors_name_the_order() -> None:
    rejected = decider()
    rejected.start(0.0)
    assert isinstance(rejected.on_response(error(401), 1.0).next, RefreshToken)
    step = rejected.on_response(error(401), 1.1)
    assert isinstance(step.next, Fail) and f"order {ORDER}" in str(step.next.error)
    assert said(step)[:3] == (Health.FAILED, "polling", 1.1)
    unexpected = decider()
    unexpected.start(0.0)
    step = unexpected.on_response(error(400), 2.0)
    assert isinstance(step.next, Fail) and f"order {ORDER}" in str(step.next.error)


def test_404_fails_exactly_when_the_grace_period_is_over() -> None:
    d = decider(interval=1.0, not_found_grace=5.0)
    d.start(0.0)
    assert isinstance(d.on_response(error(404), 0.0).next, Wait)
    assert isinstance(d.on_response(error(404), 4.999).next, Wait)
    step = d.on_response(error(404), 5.0)
    assert isinstance(step.next, Fail) and isinstance(step.next.error, OrderNotFound)
    assert f"order {ORDER}" in str(step.next.error)
    assert said(step)[:3] == (Health.FAILED, "polling", 5.0)


def test_a_finished_poller_says_so_when_used_again() -> None:
    d = decider()
    d.start(0.0)
    d.on_response(ok("done"), 1.0)
    with pytest.raises(RuntimeError, match="already finished or failed"):
        d.on_response(ok("done"), 2.0)
