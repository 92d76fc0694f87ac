from __future__ import annotations

import pytest

from gateway_app.errors import AccessDeniedError
from gateway_app.errors import PolicyError
from gateway_app.policy.decision import Decision


@pytest.mark.parametrize("value", [True, [True], [True, "extra"], (True,)],
                         ids=["true", "[true]", "[true, ...]", "a tuple starting with true"])
def test_true_or_a_list_starting_with_true_allows(value):
    decision = Decision.from_result(value)

    assert decision == Decision(allowed=True, headers={}, http_status=None, body=None, reason="policy_allowed")


@pytest.mark.parametrize(("value", "reason"), [
    (False, "policy_denied"),
    ([False], "policy_denied"),
    ([], "policy_denied"),
    (None, "policy_undefined"),
    ("true", "policy_result_invalid"),
    (1, "policy_result_invalid"),
    (0, "policy_result_invalid"),
    (1.0, "policy_result_invalid"),
    ({True}, "policy_result_invalid"),
    (["true"], "policy_result_invalid"),
    ([1], "policy_result_invalid"),
    ([None, True], "policy_result_invalid"),
], ids=["false", "[false]", "empty list", "undefined", "the string true", "the number 1", "the number 0",
        "a float", "a set", "a list starting with a string", "a list starting with 1", "a list starting with null"])
def test_anything_else_denies_with_403(value, reason):
    decision = Decision.from_result(value)

    assert (decision.allowed, decision.reason, decision.http_status) == (False, reason, 403)


def test_evaluation_error_denies_with_policy_error():
    decision = Decision.from_error(PolicyError("policy evaluation failed: boom"))

    assert (decision.allowed, decision.reason, decision.http_status) == (False, "policy_error", 403)


def test_object_allowing_carries_headers_for_the_upstream():
    decision = Decision.from_result({"allowed": True, "headers": {"x-user": "alice"}})

    assert (decision.allowed, decision.headers, decision.reason) == (True, {"x-user": "alice"}, "policy_allowed")


def test_object_denying_carries_status_headers_and_body():
    decision = Decision.from_result({"allowed": False, "http_status": 429, "headers": {"retry-after": "10"},
                                     "body": {"error": "slow down"}})

    assert decision == Decision(allowed=False, headers={"retry-after": "10"}, http_status=429,
                                body={"error": "slow down"}, reason="policy_denied")


def test_object_denying_without_status_defaults_to_403():
    assert Decision.from_result({"allowed": False}).http_status == 403


def test_unknown_object_keys_are_ignored():
    assert Decision.from_result({"allowed": True, "request_headers_to_remove": ["x"]}).allowed is True


@pytest.mark.parametrize("value", [
    {},
    {"allowed": "true"},
    {"allowed": 1},
    {"allowed": None},
    {"allowed": True, "http_status": "403"},
    {"allowed": False, "http_status": 99},
    {"allowed": False, "http_status": 600},
    {"allowed": False, "http_status": 403.0},
    {"allowed": False, "http_status": True},
    {"allowed": True, "headers": {"x-n": 1}},
    {"allowed": True, "headers": ["x-a: b"]},
    {"allowed": True, "headers": {"x-a": ["b"]}},
    {"allowed": True, "headers": {"x-a\r\nx-admin": "yes"}},
    {"allowed": True, "headers": {"x a": "b"}},
    # Red team pass 2, findings 3 and 6: an interim status as the answer, fields the gateway owns.
    {"allowed": False, "http_status": 101, "headers": {"Upgrade": "websocket", "Connection": "Upgrade"}},
    {"allowed": False, "http_status": 100},
    {"allowed": False, "headers": {"Content-Length": "0"}},
    {"allowed": False, "headers": {"Transfer-Encoding": "chunked"}},
    {"allowed": True, "headers": {"Host": "admin.internal"}},
    {"allowed": True, "headers": {"X-Request-Id": "forged"}},
    {"allowed": True, "headers": {"x-forwarded-for": "10.0.0.1"}},
    {"allowed": True, "headers": {"Forwarded": "for=10.0.0.1"}},
    {"allowed": True, "headers": {"keep-alive": "timeout=5"}},
    # Red team pass 3, finding 9
    {"allowed": True, "headers": {"Expect": "100-continue"}},
    {"allowed": True, "headers": {"Via": "1.1 internal"}},
    {"allowed": True, "headers": {"X-Real-IP": "10.0.0.1"}},
    {"allowed": True, "headers": {"X-Original-URL": "/admin"}},
    {"allowed": True, "headers": {"X-HTTP-Method-Override": "DELETE"}},
    {"allowed": False, "http_status": 200},
    {"allowed": False, "http_status": 304},
], ids=["no allowed", "allowed as a string", "allowed as a number", "allowed null",
        "status as a string", "status below 100", "status above 599", "status as a float", "status as a boolean",
        "a header value that is a number", "headers as a list", "a header value that is a list",
        "a header name with CRLF", "a header name with a space",
        "101 with Upgrade", "100", "deny with Content-Length", "deny with Transfer-Encoding", "allow with Host",
        "allow with X-Request-Id", "allow with X-Forwarded-For", "allow with Forwarded", "allow with Keep-Alive",
        "allow with Expect", "allow with Via", "allow with X-Real-IP", "allow with X-Original-URL",
        "allow with X-HTTP-Method-Override", "deny with 200", "deny with 304"])
def test_malformed_objects_deny_as_invalid_even_when_allowed_is_true(value):
    decision = Decision.from_result(value)

    assert (decision.allowed, decision.reason, decision.http_status, decision.headers) == (
        False, "policy_result_invalid", 403, {})
    assert decision.detail.startswith("invalid policy result:")


def test_policy_header_values_become_valid_header_text():
    """Commas and quotes are kept; CR, LF and non-ASCII are percent-encoded (gateway_app.header_values)."""
    decision = Decision.from_result({"allowed": False, "headers": {
        "www-authenticate": 'Bearer realm="api", error="x"', "x-user": "山田\r\nx-admin: yes"}})
    assert decision.headers == {"www-authenticate": 'Bearer realm="api", error="x"',
                                "x-user": "UTF-8''%E5%B1%B1%E7%94%B0%0D%0Ax-admin%3A%20yes"}


def test_allowed_decision_has_no_error():
    assert Decision.from_result(True).to_error() is None


def test_plain_deny_becomes_access_denied_with_the_policy_answer():
    decision = Decision.from_result({"allowed": False, "http_status": 401, "headers": {"x-why": "no"}, "body": "no"})

    error = decision.to_error()

    assert type(error) is AccessDeniedError
    assert (error.status_code, error.reason, error.extra_headers(), error.body) == (401, "policy_denied",
                                                                                   {"x-why": "no"}, "no")


@pytest.mark.parametrize(("value", "reason"), [(None, "policy_undefined"), ("yes", "policy_result_invalid")],
                         ids=["undefined", "invalid"])
def test_undefined_or_invalid_result_becomes_a_policy_error(value, reason):
    error = Decision.from_result(value).to_error()

    assert isinstance(error, PolicyError)
    assert (error.status_code, error.reason) == (403, reason)


def test_dynamic_metadata_of_an_allowing_object_is_kept():
    decision = Decision.from_result({"allowed": True, "dynamic_metadata": {"usagePlan": "gold"}})
    assert (decision.allowed, decision.dynamic_metadata) == (True, {"usagePlan": "gold"})


def test_dynamic_metadata_that_is_not_an_object_makes_the_result_invalid():
    decision = Decision.from_result({"allowed": True, "dynamic_metadata": ["gold"]})
    assert (decision.allowed, decision.reason) == (False, "policy_result_invalid")
