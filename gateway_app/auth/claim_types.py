"""The types RFC 7519 §4.1 (and RFC 7662 §2.2) give registered claims: the one check, for JWTs and introspection alike.

A token whose claims break these rules is refused (:class:`InvalidTokenError`, reason
``token_claims_invalid``): never accepted with a claim the gateway would misread, never a 500.

- ``exp``, ``nbf``, ``iat``: NumericDate, a finite JSON number of seconds since the epoch,
  between 0 and :data:`MAX_NUMERIC_DATE` (9999-12-31T23:59:59Z);
- ``aud``: a string or an array of strings;
- ``iss``, ``sub``, ``jti``, ``client_id``, ``username``, ``token_type``, ``scope``: strings
  (``scope`` is space-delimited, RFC 8693 §4.2 / RFC 7662 §2.2);
- ``scp`` (Okta, Azure AD): a string or an array of strings.

Other claims are application data and may have any JSON type.
"""

from __future__ import annotations

import typing as t

from ..errors import InvalidTokenError
from ..json_input import is_number

MAX_NUMERIC_DATE = 253_402_300_799          # 9999-12-31T23:59:59Z
NUMERIC_DATE_CLAIMS = ("exp", "nbf", "iat")
STRING_CLAIMS = ("iss", "sub", "jti", "client_id", "username", "token_type", "scope")
STRING_OR_STRINGS_CLAIMS = ("aud", "scp")

REASON = "token_claims_invalid"


def check_claim_types(claims: t.Mapping[str, t.Any]) -> None:
    """Refuse claims whose registered names carry the wrong type.

    :param claims: the decoded claims (a JWT payload or an active introspection answer).
    :raises InvalidTokenError: reason ``token_claims_invalid``; the message names the claim.
    """
    for name in NUMERIC_DATE_CLAIMS:
        value = claims.get(name)
        if value is not None and not is_numeric_date(value):
            raise InvalidTokenError(f"the {name} claim is not a NumericDate", reason=REASON)
    for name in STRING_CLAIMS:
        value = claims.get(name)
        if value is not None and not isinstance(value, str):
            raise InvalidTokenError(f"the {name} claim is not a string", reason=REASON)
    for name in STRING_OR_STRINGS_CLAIMS:
        value = claims.get(name)
        if value is not None and not _string_or_strings(value):
            raise InvalidTokenError(f"the {name} claim is not a string or an array of strings", reason=REASON)


def is_numeric_date(value: t.Any) -> bool:
    """A finite JSON number in ``[0, MAX_NUMERIC_DATE]`` (RFC 7519 §2 NumericDate)."""
    return is_number(value) and 0 <= value <= MAX_NUMERIC_DATE


def _string_or_strings(value: t.Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
