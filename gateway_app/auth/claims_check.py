"""The ``claims`` condition of an oauth2 step: one Rego (v1) expression over ``input.claims``.

Examples (what Traefik Hub's ``claims`` option is used for)::

    input.claims.iss == "https://idp.example.com/"                      # equality
    contains(input.claims.email, "@example.com")                        # contains, strings
    "admin" in input.claims.groups                                      # contains, arrays
    input.claims.aud == "api"; "read" in input.claims.scp               # "and": separate with ;
    not input.claims.disabled                                           # not
    input.claims.tier == "gold" or ...                                  # "or": write two rules, see README

The expression is compiled once with the policy engine at load time; a syntax error is a
config error. It allows when the body holds; an undefined or false body denies; an evaluation
that fails (a runtime error in the engine) raises :class:`PolicyError`, which the oauth2 step
logs and answers 403 ``policy_error``, as a failing ``opaAuth`` policy is answered.
"""

from __future__ import annotations

import hashlib
import typing as t

from ..errors import ConfigError
from ..policy.engine import PolicyEngine
from ..policy.loader import load_module


class RegoClaimsCheck:
    """One ``claims`` expression compiled as the body of a Rego v1 rule over ``input.claims``
    (``;`` separates conditions, which must all hold), in its own package named by its hash.

    :raises ConfigError: (constructor) a multi-line expression with braces, or one that does not compile.
    """

    def __init__(self, expression: str, where: str) -> None:
        if "\n" in expression.strip() and "{" in expression:
            raise ConfigError("claims: one expression (use ';' between conditions)", where=where)
        package = "gateway_claims.c" + hashlib.sha256(expression.encode()).hexdigest()[:12]
        body = "; ".join(part.strip() for part in expression.split(";") if part.strip())
        source = f"package {package}\n\nimport rego.v1\n\nallow if {{ {body} }}\n"
        self.query = f"data.{package}.allow"
        try:
            module = load_module(package, source, where)
            self.engine = PolicyEngine([module], queries=[self.query])
        except ConfigError as e:
            raise ConfigError(f"claims expression does not compile: {e.detail}", where=where) from e

    def allows(self, claims: t.Mapping[str, t.Any]) -> bool:
        """Whether the expression holds over ``input.claims`` (undefined: it does not).

        :raises PolicyError: the evaluation failed.
        """
        return self.engine.evaluate(self.query, {"claims": dict(claims)}) is True
