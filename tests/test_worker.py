"""The head-reading worker's buffering rules (gateway_app/worker.py); end to end in tests/e2e/test_slow_clients.py."""

from __future__ import annotations

import types

import pytest

from gateway_app.worker import DEFAULT_CLIENT_TIMEOUT
from gateway_app.worker import DEFAULT_HEAD_TIMEOUT
from gateway_app.worker import DEFAULT_MIN_BODY_RATE
from gateway_app.request_buffer import HeadBuffer
from gateway_app.request_buffer import HeadLimits
from gateway_app.request_buffer import HeadState
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



@pytest.mark.parametrize("raw, expected", [("", DEFAULT_MIN_BODY_RATE), ("0", 0.0), ("1000", 1000.0)])
def test_the_minimum_body_rate_comes_from_the_environment(raw, expected):
    assert min_body_rate_from_env({"GATEWAY_MIN_BODY_RATE": raw}) == expected


@pytest.mark.parametrize("raw", ["-1", "fast", "inf", "nan"])
def test_a_bad_minimum_body_rate_stops_start_up(raw):
    with pytest.raises(ValueError, match="GATEWAY_MIN_BODY_RATE"):
        min_body_rate_from_env({"GATEWAY_MIN_BODY_RATE": raw})


# --- Request buffering: the body is read in the loop before the request takes a thread -------

from gateway_app.request_buffer import BodyFraming  # noqa: E402
from gateway_app.request_buffer import ChunkedScanner  # noqa: E402
from gateway_app.request_buffer import Framing  # noqa: E402
from gateway_app.worker import MinRateWindow  # noqa: E402
from gateway_app.request_buffer import RequestBuffer  # noqa: E402
from gateway_app.request_buffer import RequestState  # noqa: E402
from gateway_app.request_buffer import SPOOL_THRESHOLD  # noqa: E402
from gateway_app.request_buffer import body_framing  # noqa: E402
from gateway_app.worker import parse_error_answer  # noqa: E402

BIG_LIMITS = HeadLimits(request_line=8190, head=100_000)


def post(headers: bytes, version: bytes = b"HTTP/1.1") -> bytes:
    return b"POST /up " + version + b"\r\nHost: x\r\n" + headers + b"\r\n"


@pytest.mark.parametrize("head, framing", [
    (post(b""), BodyFraming(Framing.NONE)),
    (post(b"Content-Length: 10\r\n"), BodyFraming(Framing.LENGTH, 10)),
    (post(b"content-length:  0 \r\n"), BodyFraming(Framing.LENGTH, 0)),
    (post(b"Content-Length: " + b"0" * 30 + b"5\r\n"), BodyFraming(Framing.LENGTH, 5)),
    (post(b"Transfer-Encoding: Chunked\r\n"), BodyFraming(Framing.CHUNKED)),
    (post(b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"), BodyFraming(Framing.CHUNKED)),
    (post(b"Content-Length: 5\r\nExpect: 100-Continue\r\n"), BodyFraming(Framing.LENGTH, 5, True)),
    (post(b"Content-Length: 5\r\nExpect: 100-continue\r\n", b"HTTP/1.0"), BodyFraming(Framing.LENGTH, 5, False)),
], ids=["no body", "Content-Length", "spaces and case", "leading zeros, read by gunicorn too", "chunked", "chunked after gzip, as gunicorn reads it",
        "Expect on HTTP/1.1", "Expect ignored on 1.0"])
def test_the_loop_waits_for_the_body_its_framing_declares(head, framing):
    assert body_framing(head) == framing


@pytest.mark.parametrize("headers, version", [
    (b"Content-Length: 5\r\nContent-Length: 5\r\n", b"HTTP/1.1"),
    (b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"HTTP/1.1"),
    (b"Content-Length: +5\r\n", b"HTTP/1.1"),
    (b"Transfer-Encoding: chunked, gzip\r\n", b"HTTP/1.1"),
    (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"HTTP/1.1"),
    (b"Transfer-Encoding: chunked\r\n", b"HTTP/1.0"),
    (b"X-Folded: a\r\n b\r\nContent-Length: 5\r\n", b"HTTP/1.1"),
], ids=["two lengths", "length and chunked", "a sign", "chunked not last", "chunked twice", "chunked on 1.0",
        "obs-fold"])
def test_an_ambiguous_framing_goes_to_gunicorns_parser_at_once(headers, version):
    request = RequestBuffer(BIG_LIMITS, None, post(headers, version))
    assert request.framing == BodyFraming(Framing.PARSER)
    assert request.state is RequestState.READY


def test_a_sized_body_is_ready_when_its_last_byte_arrives():
    request = RequestBuffer(BIG_LIMITS, None, post(b"Content-Length: 10\r\n") + b"abc")
    assert request.in_body and request.state is RequestState.INCOMPLETE
    for byte in b"defghi":
        assert request.feed(bytes([byte])) is RequestState.INCOMPLETE
    assert request.feed(b"jGET /next") is RequestState.READY
    assert request.body_received == 3 + 6 + 10
    request.close()


def test_a_chunked_body_is_ready_after_its_trailers_in_any_split():
    body = b"5;name=v\r\nhello\r\n10\r\n" + b"x" * 16 + b"\r\n0\r\nX-Trailer: 1\r\n\r\n"
    for split in range(1, len(body)):
        request = RequestBuffer(BIG_LIMITS, None, post(b"Transfer-Encoding: chunked\r\n"))
        assert request.feed(body[:split]) is RequestState.INCOMPLETE, split
        assert request.feed(body[split:]) is RequestState.READY, split
        request.close()


def test_a_chunked_body_byte_by_byte_declares_its_sizes():
    scanner = ChunkedScanner()
    for byte in b"a\r\n0123456789\r\nA\r\n0123456789\r\n0\r\n\r\n":
        assert not scanner.done
        scanner.feed(bytes([byte]))
    assert scanner.done and not scanner.invalid and scanner.declared == 20


@pytest.mark.parametrize("body", [b"zz\r\n", b"5\r\nhelloXY", b"5\nhello", b"5\n", b"5\r\nhello\n",
                                  b"5\r\nhello\r\n0\n\n", b"0\r\nX-T: 1\n", b"5" + b" " * 5000],
                         ids=["not hex", "no CRLF after the data", "bare LF", "bare LF alone after a size",
                              "bare LF after the data", "bare LF after the last chunk", "bare LF in a trailer",
                              "endless size line"])
def test_a_chunked_body_the_loop_cannot_frame_is_refused_400_by_the_loop(body):
    """Red team 3 F1: gunicorn's chunk reader waits on the socket for a CRLF after a bare LF, on a
    pool thread; the loop answers what it cannot frame itself, and no thread ever reads the client."""
    request = RequestBuffer(BIG_LIMITS, None, post(b"Transfer-Encoding: chunked\r\n") + body)
    assert request.state is RequestState.REFUSED
    assert request.refusal is not None and (request.refusal.status, request.refusal.reason) == (400, "invalid_chunked_body")
    assert request.buffered_body(None) is None                  # its bytes are dropped


def test_a_bare_lf_trickled_a_byte_at_a_time_is_refused_on_the_byte_that_breaks_the_framing():
    request = RequestBuffer(BIG_LIMITS, None, post(b"Transfer-Encoding: chunked\r\n"))
    assert request.feed(b"5") is RequestState.INCOMPLETE
    assert request.feed(b"\n") is RequestState.REFUSED


def test_a_content_length_of_more_than_18_digits_is_above_any_limit_and_never_waited_for():
    request = RequestBuffer(BIG_LIMITS, 100, post(b"Content-Length: " + b"9" * 40 + b"\r\n"))
    assert request.state is RequestState.READY and request.too_large
    unlimited = RequestBuffer(BIG_LIMITS, None, post(b"Content-Length: " + b"9" * 40 + b"\r\n"), budget=BodyBudget(10**9))
    assert unlimited.state is RequestState.REFUSED


def test_a_content_length_above_the_body_limit_is_ready_at_once_for_the_413():
    request = RequestBuffer(BIG_LIMITS, 100, post(b"Content-Length: 101\r\n"))
    assert request.state is RequestState.READY and request.body_received == 0
    assert request.too_large
    assert not RequestBuffer(BIG_LIMITS, 100, post(b"Content-Length: 100\r\n")).too_large


def test_a_chunk_size_of_many_hex_digits_is_ready_at_once_for_the_413():
    request = RequestBuffer(BIG_LIMITS, 100, post(b"Transfer-Encoding: chunked\r\n") + b"1" + b"0" * 20 + b"\r\n")
    assert request.state is RequestState.READY and request.too_large


def test_chunk_sizes_adding_up_above_the_body_limit_are_ready_at_once_for_the_413():
    request = RequestBuffer(BIG_LIMITS, 100, post(b"Transfer-Encoding: chunked\r\n") + b"40\r\n" + b"x" * 64 + b"\r\n")
    assert request.state is RequestState.INCOMPLETE
    assert request.feed(b"40\r\n") is RequestState.READY          # 128 declared, before its data
    request.close()


def test_expect_100_continue_is_answered_only_while_the_body_is_awaited():
    request = RequestBuffer(BIG_LIMITS, 100, post(b"Content-Length: 5\r\nExpect: 100-continue\r\n"))
    assert request.expects_continue
    request.feed(b"hello")
    assert not request.expects_continue
    request.close()
    over = RequestBuffer(BIG_LIMITS, 1, post(b"Content-Length: 5\r\nExpect: 100-continue\r\n"))
    assert not over.expects_continue                            # refused 413 without asking for the body


def test_the_buffered_body_is_given_back_byte_for_byte_then_the_socket():
    class Client:
        def recv(self, size: int, flags: int = 0) -> bytes:
            return b"from the socket"

    body = bytes(range(256)) * 1024                             # above the in-memory threshold
    request = RequestBuffer(BIG_LIMITS, None, post(b"Content-Length: %d\r\n" % len(body)) + body[:10])
    for start in range(10, len(body), 5000):
        request.feed(body[start:start + 5000])
    assert request.state is RequestState.READY and len(body) > SPOOL_THRESHOLD
    assert bytes(request.head.data).endswith(body[:10])
    buffered = request.buffered_body(Client())
    assert buffered is not None
    read = b"".join(iter(lambda: buffered.recv(65536), b"from the socket"))
    assert read == body[10:]
    assert buffered.rest() == b""


def test_a_request_without_body_bytes_after_its_head_has_no_buffered_body():
    request = RequestBuffer(BIG_LIMITS, None, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert request.state is RequestState.READY and request.buffered_body(None) is None


def test_a_head_too_large_stays_too_large():
    request = RequestBuffer(LIMITS, None, b"GET /a HTTP/1.1\r\n" + b"X: " + b"v" * 300)
    assert request.state is RequestState.TOO_LARGE


# --- The minimum body rate, per window ----------------------------------------------------------

def test_a_burst_then_a_trickle_is_cut_one_window_after_the_burst():
    """The red team's F2': 1 MB at once, then 1 byte every 10 s; averaged from the start it passed for an hour."""
    clock = FakeClock(100.0)
    window = MinRateWindow(rate=240, window=5.0, idle_timeout=30.0, now=clock())
    window.feed(1_000_000, clock())
    clock.now += 4.0
    window.feed(1, clock())
    assert window.deadline == 100.0 + 5.0                      # the burst's window, restarted at the burst


def test_a_body_at_the_minimum_rate_keeps_moving_its_deadline():
    clock = FakeClock(100.0)
    window = MinRateWindow(rate=240, window=5.0, idle_timeout=30.0, now=clock())
    for _ in range(100):
        clock.now += 1.0
        window.feed(240, clock())
        assert window.deadline > clock.now
    assert window.deadline <= clock.now + 5.0


def test_a_body_below_the_rate_within_a_window_is_due_at_the_window_end():
    """The red team's F1: Content-Length 10 and no body; or a byte a second, 5 bytes per 1200-byte window."""
    clock = FakeClock(100.0)
    window = MinRateWindow(rate=240, window=5.0, idle_timeout=30.0, now=clock())
    for _ in range(4):
        clock.now += 1.0
        window.feed(1, clock())
    assert window.deadline == 105.0


def test_without_a_minimum_rate_the_body_has_the_idle_timeout_between_bytes():
    clock = FakeClock(100.0)
    window = MinRateWindow(rate=0, window=5.0, idle_timeout=30.0, now=clock())
    clock.now += 20.0
    window.feed(1, clock())
    assert window.deadline == 150.0


# --- gunicorn's refusals as the gateway's errors ------------------------------------------------

def test_gunicorns_refusals_keep_their_status_with_a_stable_reason():
    from gunicorn.http import errors

    assert parse_error_answer(errors.InvalidHTTPVersion("HTTP/9.9")) == (
        400, "invalid_http_version", "unsupported HTTP version")
    assert parse_error_answer(errors.LimitRequestLine(9000, 8190))[:2] == (414, "uri_too_long")
    assert parse_error_answer(errors.ExpectationFailed("200-ok"))[0] == 417
    assert parse_error_answer(errors.InvalidResponseHeader("x"))[0] == 500
    assert parse_error_answer(ValueError("bug")) is None


# --- The body limit the loop applies: the largest any route allows -----------------------------

LIMITED_ROUTES = """
apiVersion: gateway.solo.io/v1
kind: VirtualService
metadata: {name: vs, namespace: gloo-system}
spec:
  virtualHost:
    domains: ['*']
    routes:
    - matchers: [{prefix: /big}]
      routeAction: {single: {upstream: {name: up, namespace: gloo-system}}}
      options: {maxRequestBodyBytes: %s}
    - matchers: [{prefix: /}]
      routeAction: {single: {upstream: {name: up, namespace: gloo-system}}}
"""


@pytest.mark.parametrize("route_limit, global_limit, largest", [
    (100, 50, 100), (10, 50, 50), (100, 0, None)],
    ids=["a route above the global limit", "a route below it", "no global limit"])
def test_the_loop_reads_a_body_up_to_the_largest_limit_any_route_allows(make_app, route_limit, global_limit,
                                                                       largest):
    from factories import upstream_yaml

    app = make_app({"up.yaml": upstream_yaml("up", "gloo-system"), "vs.yaml": LIMITED_ROUTES % route_limit},
                   max_body_bytes=global_limit)
    assert app.extensions["gateway"].largest_body_limit() == largest


# --- The overload rule ------------------------------------------------------------------------

from gateway_app.overload import OVERLOAD_SPARED_BODY_RATE  # noqa: E402
from gateway_app.overload import OVERLOAD_TIMEOUT  # noqa: E402
from gateway_app.overload import Waiting  # noqa: E402
from gateway_app.overload import overload_victims  # noqa: E402
from gateway_app.overload import peer_key  # noqa: E402


def test_below_the_high_water_mark_no_waiting_request_is_shed():
    clock = FakeClock(100.0)
    waiting = [Waiting(n, clock() - 9.0) for n in range(10)]
    idle = [Waiting("idle", clock() - 9.0)]
    assert overload_victims(idle, waiting, open_connections=74, high_water=75, limit=100, now=clock()) == []


def test_above_the_high_water_mark_connections_older_than_the_short_timeout_are_shed_oldest_first():
    """The red team's F3: thousands of unfinished heads; each new connection gets 1 s instead of 10."""
    clock = FakeClock(100.0)
    waiting = [Waiting("a", clock() - 3.0), Waiting("b", clock() - 2.0),
               Waiting("c", clock() - OVERLOAD_TIMEOUT / 2), Waiting("d", clock())]
    assert overload_victims([], waiting, open_connections=80, high_water=75, limit=100, now=clock()) == ["a", "b"]


def test_at_worker_connections_the_oldest_new_connections_are_shed_until_a_batch_of_slots_is_free():
    """1/32 of worker_connections (3 of 100) is freed at once, so a flood costs one run per batch."""
    clock = FakeClock(100.0)
    waiting = [Waiting(n, clock() - 0.1 * (10 - n)) for n in range(10)]        # all younger than 1 s
    assert overload_victims([], waiting, open_connections=102, high_water=75, limit=100,
                            now=clock()) == [0, 1, 2, 3, 4]


def test_a_request_after_an_answered_one_gets_the_short_deadline_under_overload():
    """Red team 3 F2: ~2000 connections each did one GET, then sent a body at exactly the minimum rate."""
    clock = FakeClock(100.0)
    second_requests = [Waiting(n, clock() - 5.0, body_rate=240.0) for n in range(3)]
    assert overload_victims([], second_requests, open_connections=80, high_water=75, limit=100,
                            now=clock()) == [0, 1, 2]


def test_idle_kept_alive_connections_past_the_deadline_are_closed_first_then_the_oldest_requests():
    """A young idle connection is kept even at worker_connections: its client may be sending a request."""
    clock = FakeClock(100.0)
    idle = [Waiting("idle-old", clock() - 3.0), Waiting("idle-new", clock() - 0.2)]
    waiting = [Waiting("request-old", clock() - 0.5), Waiting("request-new", clock() - 0.1)]
    assert overload_victims(idle, waiting, open_connections=80, high_water=75, limit=100,
                            now=clock()) == ["idle-old"]
    assert overload_victims(idle, waiting, open_connections=102, high_water=75, limit=100,
                            now=clock()) == ["idle-old", "request-old", "request-new"]


def test_a_body_arriving_well_above_the_minimum_rate_is_not_shed_for_the_deadline():
    """Red team 4 F2 and 6 F2: under a flood of unfinished heads from the same address, or from many
    addresses, uploads older than 1 s were cut; a 3 kB/s one is spared, a body at the minimum rate is not."""
    clock = FakeClock(100.0)
    waiting = [Waiting("upload", clock() - 5.0, "10.0.0.9", body_rate=3_000.0),
               Waiting("trickle", clock() - 5.0, "10.0.0.9", body_rate=240.0),
               *(Waiting(f"head-{n}", clock() - 2.0, "10.0.0.9") for n in range(5))]
    victims = overload_victims([], waiting, open_connections=80, high_water=75, limit=100, now=clock())
    assert victims == ["trickle", *(f"head-{n}" for n in range(5))]
    assert waiting[0].body_rate >= OVERLOAD_SPARED_BODY_RATE


def test_the_connections_of_peers_that_are_not_heavy_are_not_shed_while_one_is():
    """Red team 4 F2 again, the attacker on its own address: its heads are shed; another client's
    slow but legal upload (above the minimum rate, below the spared rate) and kept-alive
    connection are not."""
    clock = FakeClock(100.0)
    flood = [Waiting(f"flood-{n}", clock() - 2.0, "10.0.0.66") for n in range(12)]
    idle = [Waiting("keep-alive", clock() - 3.0, "10.0.0.1"), Waiting("flood-idle", clock() - 3.0, "10.0.0.66")]
    waiting = [Waiting("upload", clock() - 3.0, "10.0.0.1", body_rate=500.0), *flood]
    assert overload_victims(idle, waiting, open_connections=80, high_water=75, limit=100,
                            now=clock()) == ["flood-idle", *(request.key for request in flood)]


def test_an_address_whose_requests_fill_the_pool_is_heavy_and_another_clients_new_connection_is_spared():
    """Red team 10 F5: 2,000 connections from one address, their whole requests waiting for a thread
    (``busy``), not read in the loop; at the limit the overload rule closed the probe's new
    connection, the only one it saw. Counting what each address has in the pool, it is spared."""
    clock = FakeClock(100.0)
    probe = [Waiting("probe", clock() - 2.0, "10.0.0.1")]
    assert overload_victims([], probe, open_connections=80, high_water=75, limit=100, now=clock()) == ["probe"]
    assert overload_victims([], probe, open_connections=80, high_water=75, limit=100, now=clock(),
                            busy={"10.0.0.66": 79}) == []


@pytest.mark.parametrize("peers", [
    ["10.0.0.1"] * 20,
    [f"10.0.0.{n}" for n in range(20)],
    ["10.0.0.1"] * 3 + [f"10.1.0.{n}" for n in range(17)],
], ids=["one load balancer", "an even crowd", "a client with three connections in a crowd of one each"])
def test_when_no_peer_is_heavy_every_late_request_is_shed_but_fast_bodies(peers):
    """Red team 5: a flood from 1,700 addresses of one connection each made the legitimate client,
    with three connections, the "heaviest" peer: a peer is heavy only above 8 connections."""
    clock = FakeClock(100.0)
    waiting = [Waiting(n, clock() - 2.0, peer, body_rate=500.0) for n, peer in enumerate(peers)]
    fast = Waiting("fast", clock() - 2.0, peers[0], body_rate=3_000.0)
    assert overload_victims([], [*waiting, fast], open_connections=80, high_water=75, limit=100,
                            now=clock()) == list(range(20))


def test_at_worker_connections_the_heavy_peers_requests_go_first_and_spared_ones_last():
    """Spared: the fast upload and the requests of the two light peers; the flood is not."""
    clock = FakeClock(100.0)
    flood = [f"flood-{n}" for n in range(10)]
    waiting = [Waiting("fast-upload", clock() - 0.9, "10.0.0.66", body_rate=50_000.0),
               Waiting("other-client", clock() - 0.8, "10.0.0.1"),
               *(Waiting(key, clock() - 0.5 + n / 100, "10.0.0.66") for n, key in enumerate(flood)),
               Waiting("third-client", clock() - 0.7, "10.0.0.2")]
    assert overload_victims([], waiting, open_connections=107, high_water=75, limit=100, now=clock()) == flood
    assert overload_victims([], waiting, open_connections=108, high_water=75, limit=100,
                            now=clock()) == [*flood, "fast-upload"]


def test_at_worker_connections_without_a_heavy_peer_the_oldest_requests_not_spared_go_first():
    clock = FakeClock(100.0)
    waiting = [Waiting("fast-upload", clock() - 0.9, "10.0.0.1", body_rate=50_000.0),
               *(Waiting(n, clock() - 0.5 + n / 100, f"10.1.0.{n}") for n in range(4)),
               Waiting("legit-head", clock() - 0.6, "10.0.0.1")]
    assert overload_victims([], waiting, open_connections=101, high_water=75, limit=100,
                            now=clock()) == ["legit-head", 0, 1, 2]


@pytest.mark.parametrize("client,key", [
    (("203.0.113.7", 50000), "203.0.113.7"),
    (("2001:db8:1:2:aaaa::1", 50000, 0, 0), "2001:db8:1:2::/64"),
    (("2001:db8:1:2:bbbb::9", 443, 0, 0), "2001:db8:1:2::/64"),
    ("/run/gateway.sock", "/run/gateway.sock"),
])
def test_the_overload_rule_counts_ipv4_peers_by_address_and_ipv6_peers_by_their_64(client, key):
    assert peer_key(client) == key


# --- The per-worker budget of buffered body bytes (red team 3 F3) ---

from gateway_app.request_buffer import BodyBudget  # noqa: E402
from gateway_app.worker import budget_shortfall  # noqa: E402
from gateway_app.worker import buffered_body_bytes_from_env  # noqa: E402


def sized(length: int, sent: bytes = b"") -> bytes:
    return post(b"Content-Length: %d\r\n" % length) + sent


def test_a_body_holds_the_bytes_it_sent_not_the_size_it_declared():
    """Red team 4: uploads declaring 1 MB and trickling at the minimum rate spent the budget by declaration."""
    budget = BodyBudget(2000)
    crowd = [RequestBuffer(BIG_LIMITS, None, sized(900, b"abc"), budget=budget) for _ in range(100)]
    assert all(request.state is RequestState.INCOMPLETE for request in crowd)
    assert budget.held == 300                                   # 100 x the 3 bytes each sent
    for request in crowd:
        request.close()
    assert budget.held == 0


def test_a_body_whose_next_bytes_do_not_fit_what_is_left_of_the_budget_is_refused_503():
    budget = BodyBudget(2000)
    first = RequestBuffer(BIG_LIMITS, None, sized(1000, b"x" * 1000), budget=budget, peer="10.0.0.1")
    assert budget.held == 1000
    second = RequestBuffer(BIG_LIMITS, None, sized(1000, b"y" * 100), budget=budget, peer="10.0.0.2")
    assert second.state is RequestState.INCOMPLETE and budget.held == 1100
    second.feed(b"y" * 850)
    assert second.state is RequestState.REFUSED and second.refusal is not None
    assert (second.refusal.status, second.refusal.reason, second.refusal.retry_after) == (503, "server_busy", 5)
    first.close()
    second.close()
    assert budget.held == 0


def test_an_authenticated_body_the_budget_refuses_asks_for_room_and_an_anonymous_one_does_not():
    """The worker ends anonymous bodies to make room for one authenticated on its head (``make_room``)."""
    budget = BodyBudget(2000)
    anonymous = RequestBuffer(BIG_LIMITS, None, sized(1000, b"x" * 1000), budget=budget, peer="10.0.0.1")
    asked: list[str] = []

    def make_room(try_reserve):
        asked.append("room")
        anonymous.close()                     # as the worker ends it
        return try_reserve()

    for authenticated in (False, True):
        request = RequestBuffer(BIG_LIMITS, None, sized(1000, b"y" * 100), budget=budget, peer="10.0.0.2")
        request.authenticated, request.make_room = authenticated, make_room
        request.feed(b"y" * 850)
        assert request.state is (RequestState.INCOMPLETE if authenticated else RequestState.REFUSED)
        assert asked == (["room"] if authenticated else [])
    assert budget.held == 950 and budget.held_by("10.0.0.2") == 950
    request.close()


def test_bodies_authenticated_for_one_principal_share_one_share_whatever_their_addresses():
    """Red team 9 F4: one token's uploads from 16 addresses held 16 shares and other users' uploads got
    503. Authenticated, their bytes count for the principal: the second address's body does not fit."""
    budget = BodyBudget(1000)
    uploads = [RequestBuffer(BIG_LIMITS, None, sized(400, b"x" * 300), budget=budget, peer=address)
               for address in ("10.0.0.1", "10.0.0.2")]
    assert budget.held == 600 and budget.held_by("10.0.0.1") == 300           # two addresses: two shares
    for upload in uploads:
        upload.authenticate("p-1234", lambda try_reserve: try_reserve())
    assert uploads[0].state is RequestState.INCOMPLETE and budget.held_by("principal:p-1234") == 300
    assert uploads[1].state is RequestState.REFUSED and uploads[1].refusal is not None
    assert uploads[1].refusal.reason == "server_busy" and budget.held == 300
    uploads[0].close()
    assert budget.held == 0


def test_a_body_declaring_more_than_half_the_budget_is_refused_503_at_once():
    """No address can ever hold more than half the budget."""
    budget = BodyBudget(1000)
    assert budget.largest == 500
    request = RequestBuffer(BIG_LIMITS, None, sized(501), budget=budget)
    assert request.state is RequestState.REFUSED and request.refusal is not None
    assert (request.refusal.status, request.refusal.reason) == (503, "server_busy")
    assert budget.held == 0


def test_a_chunked_body_is_refused_503_when_its_running_total_exceeds_the_budget():
    budget = BodyBudget(200)
    request = RequestBuffer(BIG_LIMITS, None, post(b"Transfer-Encoding: chunked\r\n") + b"40\r\n", budget=budget)
    assert request.state is RequestState.INCOMPLETE
    request.feed(b"x" * 64 + b"\r\n")
    assert request.feed(b"40\r\n") is RequestState.REFUSED           # 128 declared
    assert budget.held == 0


def test_past_half_of_the_budget_no_address_holds_more_than_is_left_free():
    """Red team 5 F1: one address's trickled uploads held 43 of 48 MB, and every other upload got 503.
    Alone it holds half; beside it another address gets what is left down to its own holding."""
    budget = BodyBudget(1000)
    attacker = [RequestBuffer(BIG_LIMITS, None, sized(400), budget=budget, peer="10.0.0.66") for _ in range(3)]
    for request in attacker:
        request.feed(b"a" * 200)
    assert [request.state for request in attacker] == [RequestState.INCOMPLETE] * 2 + [RequestState.REFUSED]
    assert budget.held_by("10.0.0.66") == 400
    upload = RequestBuffer(BIG_LIMITS, None, sized(300), budget=budget, peer="10.0.0.1")
    assert upload.feed(b"u" * 300) is RequestState.READY                 # 700 held: 300 <= 1000 - 700
    third = RequestBuffer(BIG_LIMITS, None, sized(100), budget=budget, peer="10.0.0.1")
    assert third.feed(b"v" * 100) is RequestState.REFUSED                # 800 held: 400 > 1000 - 800
    assert budget.held_by("10.0.0.1") == 300 and budget.held == 700
    for request in [*attacker, upload, third]:
        request.close()
    assert budget.held == 0


def test_alone_an_address_holds_up_to_half_the_budget():
    budget = BodyBudget(1000)
    requests = [RequestBuffer(BIG_LIMITS, None, sized(250), budget=budget, peer="10.0.0.1") for _ in range(3)]
    states = [request.feed(b"x" * 250) for request in requests]
    assert states == [RequestState.READY, RequestState.READY, RequestState.REFUSED]
    for request in requests:
        request.close()
    assert budget.held == 0 and budget.held_by("10.0.0.1") == 0


@pytest.mark.parametrize("largest_body, warned", [(500, False), (501, True), (None, True)])
def test_a_route_allowing_bodies_the_budget_cannot_hold_is_pointed_out_at_boot(largest_body, warned):
    problem = budget_shortfall(largest_body, BodyBudget(1000))
    assert (problem is not None) == warned
    assert problem is None or ("GATEWAY_BUFFERED_BODY_BYTES" in problem and "500 bytes" in problem)


def test_a_served_body_gives_its_bytes_back_when_the_thread_is_done_with_it():
    budget = BodyBudget(10_000)
    request = RequestBuffer(BIG_LIMITS, None, sized(5000), budget=budget)
    request.feed(b"x" * 5000)
    assert request.state is RequestState.READY and budget.held == 5000
    buffered = request.buffered_body(None)
    assert buffered is not None and budget.held == 5000             # the thread reads it
    buffered.rest()
    assert budget.held == 0


def test_a_body_above_the_route_limit_is_refused_413_without_taking_budget():
    budget = BodyBudget(10)
    request = RequestBuffer(BIG_LIMITS, 100, sized(101), budget=budget)
    assert request.state is RequestState.READY and request.too_large and budget.held == 0


def test_a_spool_write_error_is_a_503_answer_not_a_reset():
    """Red team 3 F3/F7: ENOSPC while spooling reset the connection and logged a traceback."""
    class FullDisk:
        def write(self, data: bytes) -> int:
            raise OSError(28, "No space left on device")

        def close(self) -> None:
            pass

    budget = BodyBudget(10_000)
    request = RequestBuffer(BIG_LIMITS, None, sized(5000), budget=budget, spool=FullDisk)
    assert request.feed(b"x" * 100) is RequestState.REFUSED
    assert request.refusal is not None and (request.refusal.status, request.refusal.reason) == (503, "server_busy")
    assert "No space left" in request.refusal.detail and budget.held == 0


@pytest.mark.parametrize("raw, expected", [("", 24 * 1024 * 1024), ("1048576", 1048576)])
def test_the_buffered_body_budget_comes_from_the_environment(raw, expected):
    assert buffered_body_bytes_from_env({"GATEWAY_BUFFERED_BODY_BYTES": raw}) == expected


@pytest.mark.parametrize("raw", ["0", "-1", "lots"])
def test_a_bad_buffered_body_budget_stops_start_up(raw):
    with pytest.raises(ValueError, match="GATEWAY_BUFFERED_BODY_BYTES"):
        buffered_body_bytes_from_env({"GATEWAY_BUFFERED_BODY_BYTES": raw})


# --- Framing overhead of chunked bodies (red team 3 F4) ---

def test_a_body_of_one_byte_chunks_is_refused_400_after_the_first_thousand_chunks():
    request = RequestBuffer(BIG_LIMITS, None, post(b"Transfer-Encoding: chunked\r\n"))
    assert request.feed(b"1\r\na\r\n" * ChunkedScanner.FREE_CHUNKS) is RequestState.INCOMPLETE
    assert request.feed(b"1\r\na\r\n") is RequestState.REFUSED
    assert request.refusal is not None and (request.refusal.status, request.refusal.reason) == (400, "chunks_too_small")


def test_chunks_averaging_64_bytes_are_read_whatever_their_count():
    scanner = ChunkedScanner()
    body = (b"7f\r\n" + b"x" * 127 + b"\r\n" + b"1\r\na\r\n") * 5000 + b"0\r\n\r\n"   # 64 bytes on average
    scanner.feed(body)
    assert scanner.done and not scanner.fragmented and scanner.chunks == 10_000


def test_a_trailer_section_larger_than_the_head_cap_is_refused():
    scanner = ChunkedScanner()
    scanner.feed(b"0\r\n" + b"X-T: " + b"v" * 4000 + b"\r\n")
    assert not scanner.invalid
    scanner.feed((b"X-T: " + b"v" * 4000 + b"\r\n") * 20)
    assert scanner.invalid and not scanner.done


def test_a_chunk_line_split_over_many_reads_is_read_as_one():
    scanner = ChunkedScanner()
    for piece in (b"1", b"0;ext", b"=", b"v\r", b"\n"):
        scanner.feed(piece)
    assert scanner.declared == 16 and not scanner.invalid


# --- The total head size cap (red team 3 F5) ---

from gateway_app.worker import max_head_bytes_from_env  # noqa: E402


def test_the_head_cap_bounds_gunicorns_per_line_limits():
    cfg = types.SimpleNamespace(limit_request_line=8190, limit_request_fields=100, limit_request_field_size=8190)
    assert HeadLimits.from_config(cfg, 65536) == HeadLimits(request_line=8190, head=65536)
    assert HeadLimits.from_config(cfg, 10**9).head == 8190 + 4 + 100 * 8192 + 4


def test_an_unfinished_head_is_too_large_as_soon_as_it_passes_the_cap():
    """600 unfinished heads of 1.5 MB each held 860 MB; now each holds at most the cap (and one read)."""
    limits = HeadLimits(request_line=8190, head=1000)
    head = HeadBuffer(limits, b"GET / HTTP/1.1\r\n")
    assert head.feed(b"X-A: " + b"v" * 900 + b"\r\n") is HeadState.INCOMPLETE
    assert head.feed(b"X-B: " + b"v" * 100) is HeadState.TOO_LARGE


def test_a_whole_head_beyond_the_cap_is_too_large_even_in_one_read():
    limits = HeadLimits(request_line=8190, head=1000)
    whole = b"GET / HTTP/1.1\r\nX-A: " + b"v" * 1000 + b"\r\n\r\n"
    assert HeadBuffer(limits, whole).state is HeadState.TOO_LARGE
    assert HeadBuffer(limits, HEAD + b"x" * 5000).state is HeadState.DECIDABLE      # body bytes do not count


@pytest.mark.parametrize("raw, expected", [("", 65536), ("32768", 32768)])
def test_the_head_cap_comes_from_the_environment(raw, expected):
    assert max_head_bytes_from_env({"GATEWAY_MAX_HEAD_BYTES": raw}) == expected


# --- Heads the loop refuses itself: HTTP/1.2, repeated Cookie (red team 3 F8, F6) ---

from gateway_app.request_buffer import head_refusal  # noqa: E402


@pytest.mark.parametrize("version", [b"HTTP/1.2", b"HTTP/1.9"])
def test_a_later_http1_minor_version_is_refused_505(version):
    request = RequestBuffer(BIG_LIMITS, None, b"GET /a " + version + b"\r\nHost: x\r\n\r\n")
    assert request.state is RequestState.REFUSED and request.refusal is not None
    assert (request.refusal.status, request.refusal.reason) == (505, "http_version_not_supported")


@pytest.mark.parametrize("version", [b"HTTP/1.1", b"HTTP/1.0"])
def test_http_1_0_and_1_1_are_not_refused(version):
    assert head_refusal(b"GET /a " + version + b"\r\nHost: x\r\n\r\n") is None


def test_two_cookie_fields_are_refused_400_in_any_case():
    refusal = head_refusal(b"GET /a HTTP/1.1\r\nCookie: a=1\r\nHost: x\r\ncOOKIE: b=2\r\n\r\n")
    assert refusal is not None and (refusal.status, refusal.reason) == (400, "cookie_repeated")


def test_two_expect_fields_are_refused_400():
    refusal = head_refusal(b"POST /a HTTP/1.1\r\nExpect: 100-continue\r\nHost: x\r\nexpect: 100-continue\r\n\r\n")
    assert refusal is not None and (refusal.status, refusal.reason) == (400, "expect_repeated")
    assert head_refusal(b"POST /a HTTP/1.1\r\nExpect: 100-continue\r\nX-Expect: 1\r\n\r\n") is None


def test_one_cookie_field_holding_a_comma_is_not_refused():
    assert head_refusal(b"GET /a HTTP/1.1\r\nCookie: recent=1,2,3; a=\"x,y\"\r\nX-Cookie: 1\r\n\r\n") is None


def test_a_cookie_repeated_across_reads_is_refused_when_the_head_ends():
    request = RequestBuffer(BIG_LIMITS, None, b"GET /b HTTP/1.1\r\nCookie: a=1\r\n")
    assert request.feed(b"Cookie: b=2\r\n\r\n") is RequestState.REFUSED
