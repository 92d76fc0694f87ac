"""The head-reading worker's buffering rules (gateway_app/worker.py); end to end in tests/e2e/test_slow_clients.py."""

from __future__ import annotations

import types

import pytest

from gateway_app.errors import RequestTimeoutError
from gateway_app.worker import DEFAULT_CLIENT_TIMEOUT
from gateway_app.worker import DEFAULT_HEAD_TIMEOUT
from gateway_app.worker import DEFAULT_MIN_BODY_RATE
from gateway_app.worker import HeadBuffer
from gateway_app.worker import HeadLimits
from gateway_app.worker import HeadState
from gateway_app.worker import MinRateSocket
from gateway_app.worker import min_body_rate_from_env
from gateway_app.worker import timeouts_from_env
from tests.support.clocks import FakeClock

LIMITS = HeadLimits(request_line=20, head=200)
HEAD = b"GET /a HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"


def feed_bytewise(data: bytes, limits: HeadLimits = LIMITS) -> list[HeadState]:
    head = HeadBuffer(limits)
    return [head.feed(data[i:i + 1]) for i in range(len(data))]


def test_a_head_is_decidable_exactly_when_its_empty_line_arrives():
    states = feed_bytewise(HEAD)
    assert states[-1] is HeadState.DECIDABLE
    assert set(states[:-1]) == {HeadState.INCOMPLETE}


@pytest.mark.parametrize("split", [1, 2, 3, 5, len(HEAD) - 1], ids=lambda n: f"split after {n} bytes")
def test_the_end_of_a_head_is_found_across_packet_boundaries(split):
    head = HeadBuffer(LIMITS, HEAD[:split])
    assert head.state is HeadState.INCOMPLETE
    assert head.feed(HEAD[split:]) is HeadState.DECIDABLE
    assert bytes(head.data) == HEAD


def test_bytes_after_the_head_are_kept_for_the_parser():
    pipelined = HEAD + b"GET /b HTTP/1.1\r\n"
    head = HeadBuffer(LIMITS, pipelined)
    assert head.state is HeadState.DECIDABLE
    assert bytes(head.data) == pipelined


def test_bytes_left_from_a_previous_request_start_the_buffer():
    head = HeadBuffer(LIMITS, b"GET /b HTTP/1.1\r\nHo")
    assert head.state is HeadState.INCOMPLETE
    assert head.feed(b"st: x\r\n\r\n") is HeadState.DECIDABLE


@pytest.mark.parametrize("data", [b"GET /a HTTP/1.1\n", b"GET /a HTTP/1.1\r\nHost: x\n", b"\n"],
                         ids=["bare LF ends the request line", "bare LF ends a header", "bare LF alone"])
def test_a_bare_lf_is_given_to_the_parser_at_once_which_refuses_it(data):
    assert HeadBuffer(LIMITS, data).state is HeadState.DECIDABLE


def test_a_crlf_split_between_packets_is_not_a_bare_lf():
    head = HeadBuffer(LIMITS, b"GET /a HTTP/1.1\r")
    assert head.feed(b"\nHost: x\r") is HeadState.INCOMPLETE
    assert head.feed(b"\n") is HeadState.INCOMPLETE
    assert head.feed(b"\r\n") is HeadState.DECIDABLE


def test_a_request_line_longer_than_its_limit_is_given_to_the_parser_which_answers_414():
    assert HeadBuffer(LIMITS, b"GET /" + b"a" * 15).state is HeadState.INCOMPLETE   # 20 bytes, no CRLF yet
    assert HeadBuffer(LIMITS, b"GET /" + b"a" * 18).state is HeadState.DECIDABLE
    assert HeadBuffer(LIMITS, b"GET /" + b"a" * 16 + b"\r\n").state is HeadState.DECIDABLE


def test_one_empty_line_before_the_request_line_does_not_count_toward_its_limit():
    line = b"GET /" + b"a" * 15          # exactly the limit
    assert HeadBuffer(LIMITS, b"\r\n" + line + b"\r\n").state is HeadState.INCOMPLETE


def test_a_request_line_without_limit_waits_for_the_head():
    head = HeadBuffer(HeadLimits(request_line=0, head=10_000), b"GET /" + b"a" * 5000)
    assert head.state is HeadState.INCOMPLETE


def test_a_head_that_cannot_end_within_the_limits_is_too_large():
    head = HeadBuffer(LIMITS, b"GET /a HTTP/1.1\r\n")
    states = [head.feed(b"X-Long: " + b"v" * 10 + b"\r\n") for _ in range(10)]
    assert len(head.data) > LIMITS.head
    assert states[-1] is HeadState.TOO_LARGE
    assert set(states[:-1]) == {HeadState.INCOMPLETE}


def test_limits_follow_gunicorns_normalization():
    cfg = types.SimpleNamespace(limit_request_line=8190, limit_request_fields=100, limit_request_field_size=16384)
    assert HeadLimits.from_config(cfg) == HeadLimits(request_line=8190, head=8190 + 4 + 100 * 16386 + 4)
    unlimited = types.SimpleNamespace(limit_request_line=0, limit_request_fields=0, limit_request_field_size=0)
    assert HeadLimits.from_config(unlimited) == HeadLimits(request_line=0, head=1024 * 1024 + 4 + 32768 * 8192 + 4)


@pytest.mark.parametrize("env, timeouts", [
    ({}, (DEFAULT_HEAD_TIMEOUT, DEFAULT_CLIENT_TIMEOUT)),
    ({"GATEWAY_HEAD_TIMEOUT": "2.5"}, (2.5, DEFAULT_CLIENT_TIMEOUT)),
    ({"GATEWAY_HEAD_TIMEOUT": " 30 ", "GATEWAY_CLIENT_TIMEOUT": "5"}, (30.0, 5.0)),
], ids=["unset gives the defaults", "fractions are allowed", "spaces are ignored"])
def test_timeouts_come_from_the_environment(env, timeouts):
    assert timeouts_from_env(env) == timeouts


@pytest.mark.parametrize("name", ["GATEWAY_HEAD_TIMEOUT", "GATEWAY_CLIENT_TIMEOUT"])
@pytest.mark.parametrize("raw", ["0", "-1", "ten", "inf", "nan"])
def test_a_timeout_that_is_not_a_positive_number_stops_start_up(name, raw):
    with pytest.raises(ValueError, match=name):
        timeouts_from_env({name: raw})


# --- The minimum body data rate and the declared body size (F2) ------------------------------

class TricklingSocket:
    """A client socket that has ``arrivals`` ready, one per recv; then every recv waits out its timeout."""

    def __init__(self, clock: FakeClock, arrivals: list[bytes], seconds_per_recv: float) -> None:
        self.clock = clock
        self.arrivals = list(arrivals)
        self.seconds_per_recv = seconds_per_recv
        self.timeout: float | None = None
        self.waits: list[float] = []

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    def recv(self, size: int, flags: int = 0) -> bytes:
        self.waits.append(self.timeout)
        if not self.arrivals:
            self.clock.now += self.timeout
            raise TimeoutError("timed out")
        self.clock.now += self.seconds_per_recv
        return self.arrivals.pop(0)


def test_a_body_trickled_below_the_minimum_rate_is_cut_with_408_after_the_grace_period():
    """The red team's trickle: one byte every 5 s; 240 bytes/s after 5 s of grace (Kestrel's default)."""
    clock = FakeClock(100.0)
    sock = TricklingSocket(clock, [b"x"] * 100, seconds_per_recv=5.0)
    body = MinRateSocket(sock, rate=240, grace=5.0, timeout=30.0, clock=clock)
    assert body.recv(8192) == b"x"              # within the grace period
    with pytest.raises(RequestTimeoutError) as cut:
        body.recv(8192)
    assert cut.value.status_code == 408 and cut.value.reason == "body_too_slow"
    assert clock.now - 100.0 <= 5.0 + 5.0       # held for at most the grace plus one wait
    assert sock.timeout == 30.0                 # the socket keeps the client timeout for the answer


def test_a_body_at_the_minimum_rate_is_read_whole():
    clock = FakeClock(100.0)
    sock = TricklingSocket(clock, [b"x" * 480] * 20, seconds_per_recv=1.0)   # 480 bytes/s
    body = MinRateSocket(sock, rate=240, grace=5.0, timeout=30.0, clock=clock)
    assert b"".join(body.recv(8192) for _ in range(20)) == b"x" * 480 * 20


def test_a_body_that_stops_within_the_rate_keeps_the_client_timeout_error():
    """A wait shorter than the rate allows ends as GATEWAY_CLIENT_TIMEOUT always did: TimeoutError (400)."""
    clock = FakeClock(100.0)
    sock = TricklingSocket(clock, [b"x" * 100_000], seconds_per_recv=0.1)
    body = MinRateSocket(sock, rate=240, grace=5.0, timeout=2.0, clock=clock)
    body.recv(65536)
    with pytest.raises(TimeoutError) as stopped:
        body.recv(65536)
    assert not isinstance(stopped.value, RequestTimeoutError)


@pytest.mark.parametrize("raw, expected", [("", DEFAULT_MIN_BODY_RATE), ("0", 0.0), ("1000", 1000.0)])
def test_the_minimum_body_rate_comes_from_the_environment(raw, expected):
    assert min_body_rate_from_env({"GATEWAY_MIN_BODY_RATE": raw}) == expected


@pytest.mark.parametrize("raw", ["-1", "fast", "inf", "nan"])
def test_a_bad_minimum_body_rate_stops_start_up(raw):
    with pytest.raises(ValueError, match="GATEWAY_MIN_BODY_RATE"):
        min_body_rate_from_env({"GATEWAY_MIN_BODY_RATE": raw})
