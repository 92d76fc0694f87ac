"""An in-memory OAuth 2.0 authorization server for tests, the demo and benchmarks.

Built on authlib's server components: the client_credentials grant, RFC 7662
introspection, RFC 7009 revocation and RFC 9068 JWT access tokens. It answers on
Hydra's paths so the walkthrough's curl commands work unchanged (and on Keycloak's
``/realms/<realm>/protocol/openid-connect/token[/introspect]`` for the Traefik Hub guide)::

    python -m tests.support.oauth_server --host 127.0.0.1 --port 4444 --port 4445
    gunicorn -w 1 --threads 8 -b 127.0.0.1:4444 'tests.support.oauth_server:create_app()'

State lives in one process (run it with one worker and several threads); one lock
guards it. Nothing here is meant for production: secrets are compared as given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import threading
import time
import typing as t

import requests
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin
from authlib.oauth2.rfc6749 import TokenMixin
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.util import scope_to_list
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from flask import Flask
from flask import jsonify
from flask import request
from joserfc import jws
from joserfc.jwk import ECKey
from joserfc.jwk import KeySet
from joserfc.jwk import RSAKey

CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]
SIGNING_ALGORITHMS = ("RS256", "ES256")
TOKEN_FORMATS = ("opaque", "jwt")
DEFAULT_TOKEN_LIFETIME = 3600
HYDRA_DEFAULT_SCOPE = "offline_access offline openid"
ISSUER_ENV = "OAUTH_SERVER_ISSUER"

DEFAULT_CLIENTS: tuple[dict[str, t.Any], ...] = (
    {"client_id": "my-client", "client_secret": "secret", "token_format": "opaque",
     "scope": "openid offline petstore tracks"},
    {"client_id": "jwt-client", "client_secret": "jwt-secret", "token_format": "jwt",
     "signing_alg": "RS256", "scope": "petstore tracks"},
    {"client_id": "jwt-es-client", "client_secret": "jwt-es-secret", "token_format": "jwt",
     "signing_alg": "ES256", "scope": "petstore tracks"},
)


class ClientMetadataError(ValueError):
    """A client registration carries a value this server does not support."""


@dataclasses.dataclass
class Client(ClientMixin):
    """A registered confidential client. ``scope`` lists the scopes it may ask for."""

    client_id: str
    client_secret: str
    scope: str = HYDRA_DEFAULT_SCOPE
    grant_types: list[str] = dataclasses.field(default_factory=lambda: ["client_credentials"])
    token_format: str = "opaque"
    signing_alg: str = "RS256"
    token_lifetime: int = DEFAULT_TOKEN_LIFETIME
    audience: list[str] = dataclasses.field(default_factory=list)
    claims: dict[str, t.Any] = dataclasses.field(default_factory=dict)   # added to introspection answers

    @classmethod
    def from_metadata(cls, metadata: t.Mapping[str, t.Any]) -> Client:
        """Build a client from Hydra-like registration JSON.

        :raises ClientMetadataError: on an unknown format, algorithm or a bad lifetime.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in metadata.items() if k in known}
        values.setdefault("client_id", secrets.token_hex(8))
        values.setdefault("client_secret", secrets.token_urlsafe(24))
        client = cls(**values)
        client.validate()
        return client

    def validate(self) -> None:
        if self.token_format not in TOKEN_FORMATS:
            raise ClientMetadataError(f"token_format must be one of {TOKEN_FORMATS}")
        if self.signing_alg not in SIGNING_ALGORITHMS:
            raise ClientMetadataError(f"signing_alg must be one of {SIGNING_ALGORITHMS}")
        if not isinstance(self.token_lifetime, int) or self.token_lifetime <= 0:
            raise ClientMetadataError("token_lifetime must be a positive integer")
        if not isinstance(self.scope, str):
            raise ClientMetadataError("scope must be a space-separated string")
        if not isinstance(self.claims, dict):
            raise ClientMetadataError("claims must be an object")

    def to_dict(self) -> dict[str, t.Any]:
        return dataclasses.asdict(self)

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        """The scope to grant: "" when none is asked, ``None`` (invalid_scope) if any is not allowed."""
        if not scope:
            return ""
        requested = scope_to_list(scope)
        allowed = set(scope_to_list(self.scope) or [])
        if not set(requested) <= allowed:
            return None
        return " ".join(requested)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(self.client_secret.encode(), client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in CLIENT_AUTH_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclasses.dataclass
class IssuedToken(TokenMixin):
    """An access token this server issued, opaque or JWT."""

    access_token: str
    client_id: str
    scope: str
    issued_at: int
    expires_at: int
    issuer: str
    audience: list[str]
    token_format: str
    revoked: bool = False
    claims: dict[str, t.Any] = dataclasses.field(default_factory=dict)

    def check_client(self, client: Client) -> bool:
        return client.client_id == self.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_at - self.issued_at

    def is_expired(self) -> bool:
        return time.time() >= self.expires_at

    def is_revoked(self) -> bool:
        return self.revoked

    def introspection(self) -> dict[str, t.Any]:
        """RFC 7662 answer for an active token, shaped like Hydra's."""
        return {
            "active": True,
            "client_id": self.client_id,
            "sub": self.client_id,
            "scope": self.scope,
            "exp": self.expires_at,
            "iat": self.issued_at,
            "nbf": self.issued_at,
            "aud": list(self.audience),
            "iss": self.issuer,
            "token_type": "Bearer",
            "token_use": "access_token",
            **self.claims,
        }


class SigningKeys:
    """Signing keys per algorithm: one current key each, older ones stay published until retired."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._published: list[RSAKey | ECKey] = []
        self._current: dict[str, RSAKey | ECKey] = {}
        for alg in SIGNING_ALGORITHMS:
            self.rotate(alg)

    def rotate(self, alg: str, retire: bool = False) -> str:
        """Make a new current key for ``alg`` and return its kid; ``retire`` unpublishes the old ones."""
        if alg not in SIGNING_ALGORITHMS:
            raise ValueError(f"alg must be one of {SIGNING_ALGORITHMS}")
        key = _generate_key(alg)
        with self._lock:
            if retire:
                self._published = [k for k in self._published if k.alg != alg]
            self._published.append(key)
            self._current[alg] = key
        return t.cast(str, key.kid)

    def current(self, alg: str) -> RSAKey | ECKey:
        with self._lock:
            return self._current[alg]

    def public_jwks(self) -> dict[str, t.Any]:
        with self._lock:
            return {"keys": [key.as_dict(private=False) for key in self._published]}


def _generate_key(alg: str) -> RSAKey | ECKey:
    parameters = {"kid": f"{alg.lower()}-{secrets.token_hex(6)}", "alg": alg, "use": "sig"}
    if alg == "RS256":
        return RSAKey.generate_key(2048, parameters=parameters)
    return ECKey.generate_key("P-256", parameters=parameters)


class OAuthState:
    """Clients, issued tokens and call counters, guarded by one lock; the keys guard themselves."""

    COUNTERS = ("introspection_calls", "token_calls", "jwks_calls")

    def __init__(self, clients: t.Iterable[Client]) -> None:
        self.lock = threading.RLock()
        self.keys = SigningKeys()
        self._clients = {client.client_id: client for client in clients}
        self._tokens: dict[str, IssuedToken] = {}
        self._stats = dict.fromkeys(self.COUNTERS, 0)

    def find_client(self, client_id: str) -> Client | None:
        with self.lock:
            return self._clients.get(client_id)

    def register_client(self, metadata: t.Mapping[str, t.Any]) -> tuple[Client, bool]:
        """Create a client, or update the one with that id (unsent fields keep their value).

        Returns the client and whether it was created.
        """
        with self.lock:
            existing = self._clients.get(metadata.get("client_id", ""))
            merged = {**existing.to_dict(), **metadata} if existing else dict(metadata)
            client = Client.from_metadata(merged)
            self._clients[client.client_id] = client
            return client, existing is None

    def save_token(self, token: IssuedToken) -> None:
        with self.lock:
            self._tokens[token.access_token] = token

    def find_token(self, access_token: str) -> IssuedToken | None:
        with self.lock:
            return self._tokens.get(access_token)

    def revoke(self, token: IssuedToken) -> None:
        with self.lock:
            token.revoked = True

    def count(self, counter: str) -> None:
        with self.lock:
            self._stats[counter] += 1

    def stats(self) -> dict[str, int]:
        with self.lock:
            return dict(self._stats)

    def reset_stats(self) -> None:
        with self.lock:
            self._stats = dict.fromkeys(self.COUNTERS, 0)


class _JwtAccessTokenGenerator(JWTBearerTokenGenerator):
    """RFC 9068 tokens signed with the current key of one algorithm; adds ``nbf`` and ``kid``."""

    def __init__(self, issuer: str, alg: str, keys: SigningKeys) -> None:
        super().__init__(issuer=issuer, alg=alg, expires_generator=_client_lifetime)
        self._keys = keys

    def get_jwks(self) -> KeySet:
        return KeySet([self._keys.current(self.alg)])

    def get_audiences(self, client: Client, user: t.Any, scope: str) -> str | list[str]:
        return list(client.audience) or client.get_client_id()

    def get_extra_claims(self, client: Client, grant_type: str, user: t.Any, scope: str) -> dict:
        now = int(time.time())
        return {"iat": now, "nbf": now, "exp": now + client.token_lifetime}


def _client_lifetime(client: Client, grant_type: str) -> int:
    return client.token_lifetime


def _opaque_token(**kwargs: t.Any) -> str:
    """A Hydra-looking opaque token: ``ory_at_<random>.<random>``."""
    return f"ory_at_{secrets.token_urlsafe(32)}.{secrets.token_urlsafe(32)}"


class _AccessTokenIssuer:
    """authlib's "default" token generator: opaque or JWT as the client's metadata says."""

    def __init__(self, state: OAuthState, issuer: t.Callable[[], str]) -> None:
        self._state = state
        self._issuer = issuer
        self._opaque = BearerTokenGenerator(_opaque_token, expires_generator=_client_lifetime)

    def __call__(self, grant_type: str, client: Client, user: t.Any = None, scope: str | None = None,
                 expires_in: int | None = None, include_refresh_token: bool = True) -> dict:
        generator = self._opaque
        if client.token_format == "jwt":
            generator = _JwtAccessTokenGenerator(self._issuer(), client.signing_alg, self._state.keys)
        token = generator(grant_type, client, user, scope, expires_in, include_refresh_token=False)
        token["token_type"] = "bearer"
        token.setdefault("scope", "")
        return token


class _ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS


class _Introspection(IntrospectionEndpoint):
    """Any authenticated client may introspect any token (Hydra's admin API does not ask at all)."""

    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def __init__(self, server: AuthorizationServer, state: OAuthState) -> None:
        super().__init__(server)
        self._state = state

    def query_token(self, token_string: str, token_type_hint: str | None) -> IssuedToken | None:
        return self._state.find_token(token_string)

    def check_permission(self, token: IssuedToken, client: Client, request: t.Any) -> bool:
        return True

    def introspect_token(self, token: IssuedToken) -> dict[str, t.Any]:
        return token.introspection()


class _Revocation(RevocationEndpoint):
    """A client may revoke its own tokens."""

    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def __init__(self, server: AuthorizationServer, state: OAuthState) -> None:
        super().__init__(server)
        self._state = state

    def query_token(self, token_string: str, token_type_hint: str | None) -> IssuedToken | None:
        return self._state.find_token(token_string)

    def revoke_token(self, token: IssuedToken, request: t.Any) -> None:
        self._state.revoke(token)


def _record_token(state: OAuthState, issuer: t.Callable[[], str]) -> t.Callable[[dict, t.Any], None]:
    """authlib's ``save_token`` callback: remember what was issued, with its real times."""

    def save_token(token: dict, oauth_request: t.Any) -> None:
        client: Client = oauth_request.client
        access_token = token["access_token"]
        if client.token_format == "jwt":
            claims = json.loads(jws.extract_compact(access_token.encode()).payload)
            issued_at, expires_at, iss = claims["iat"], claims["exp"], claims["iss"]
            audience = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        else:
            issued_at = int(time.time())
            expires_at, iss = issued_at + token["expires_in"], issuer()
            audience = list(client.audience)
        state.save_token(IssuedToken(access_token, client.client_id, token["scope"], issued_at,
                                     expires_at, iss, audience, client.token_format, claims=dict(client.claims)))

    return save_token


def create_app(config: dict[str, t.Any] | None = None) -> Flask:
    """Build the server. ``config`` keys: ``issuer`` (default: $OAUTH_SERVER_ISSUER, else
    the request's host URL) and ``clients`` (registration dicts replacing :data:`DEFAULT_CLIENTS`)."""
    config = dict(config or {})
    app = Flask(__name__)
    app.config["OAUTH_ISSUER"] = config.get("issuer") or os.environ.get(ISSUER_ENV)
    clients = [Client.from_metadata(c) for c in config.get("clients", DEFAULT_CLIENTS)]
    state = OAuthState(clients)

    def issuer() -> str:
        return app.config["OAUTH_ISSUER"] or request.host_url

    server = AuthorizationServer(app, query_client=state.find_client, save_token=_record_token(state, issuer))
    server.register_token_generator("default", _AccessTokenIssuer(state, issuer))
    server.register_grant(_ClientCredentialsGrant)
    server.register_endpoint(_Introspection(server, state))
    server.register_endpoint(_Revocation(server, state))
    app.extensions["oauth_state"] = state
    _register_oauth_routes(app, server, state)
    _register_discovery_routes(app, state, issuer)
    _register_admin_routes(app, state)
    return app


def _register_oauth_routes(app: Flask, server: AuthorizationServer, state: OAuthState) -> None:
    @app.post("/oauth2/token")
    @app.post("/realms/<realm>/protocol/openid-connect/token")          # Keycloak's paths
    def token(realm: str | None = None):
        state.count("token_calls")
        return server.create_token_response()

    @app.post("/oauth2/introspect")
    @app.post("/admin/oauth2/introspect")
    @app.post("/realms/<realm>/protocol/openid-connect/token/introspect")
    def introspect(realm: str | None = None):
        state.count("introspection_calls")
        return server.create_endpoint_response(_Introspection.ENDPOINT_NAME)

    @app.post("/oauth2/revoke")
    def revoke():
        return server.create_endpoint_response(_Revocation.ENDPOINT_NAME)


def _register_discovery_routes(app: Flask, state: OAuthState, issuer: t.Callable[[], str]) -> None:
    @app.get("/.well-known/jwks.json")
    def jwks():
        state.count("jwks_calls")
        return jsonify(state.keys.public_jwks())

    @app.get("/.well-known/openid-configuration")
    def openid_configuration():
        base = issuer().rstrip("/")
        return jsonify({
            "issuer": issuer(),
            "token_endpoint": f"{base}/oauth2/token",
            "jwks_uri": f"{base}/.well-known/jwks.json",
            "introspection_endpoint": f"{base}/oauth2/introspect",
            "revocation_endpoint": f"{base}/oauth2/revoke",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
            "id_token_signing_alg_values_supported": list(SIGNING_ALGORITHMS),
        })


def _register_admin_routes(app: Flask, state: OAuthState) -> None:
    @app.post("/admin/clients")
    def register_client():
        metadata = request.get_json(silent=True)
        if not isinstance(metadata, dict):
            return _error("invalid_request", "body must be a JSON object", 400)
        try:
            client, created = state.register_client(metadata)
        except (ClientMetadataError, TypeError) as error:
            return _error("invalid_client_metadata", str(error), 400)
        return jsonify(client.to_dict()), 201 if created else 200

    @app.post("/admin/keys/rotate")
    def rotate_keys():
        alg = request.args.get("alg", "RS256")
        retire = request.args.get("retire") in ("1", "true")
        try:
            kid = state.keys.rotate(alg, retire=retire)
        except ValueError as error:
            return _error("invalid_request", str(error), 400)
        return jsonify({"alg": alg, "kid": kid, "retired": retire})

    @app.get("/admin/stats")
    def stats():
        return jsonify(state.stats())

    @app.post("/admin/stats/reset")
    def reset_stats():
        state.reset_stats()
        return jsonify(state.stats())


def _error(code: str, description: str, status: int):
    return jsonify({"error": code, "error_description": description}), status


def request_token(base_url: str, client_id: str, secret: str, scope: str | None = None,
                  timeout: float = 10.0) -> dict[str, t.Any]:
    """Ask ``base_url``'s token endpoint for a client_credentials token (client_secret_basic).

    :raises requests.HTTPError: when the server refuses.
    """
    data = {"grant_type": "client_credentials"}
    if scope is not None:
        data["scope"] = scope
    with requests.Session() as session:
        session.trust_env = False
        response = session.post(f"{base_url.rstrip('/')}/oauth2/token", data=data,
                                auth=(client_id, secret), timeout=timeout)
    response.raise_for_status()
    return response.json()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.support.oauth_server", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, action="append", help="repeat to listen on several ports")
    parser.add_argument("--issuer", help="default: http://HOST:FIRST_PORT/")
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)
    args.port = args.port or [4444]
    return args


def main(argv: list[str] | None = None) -> None:
    """Serve :func:`create_app` with gunicorn: one worker, several threads, one or more ports."""
    from gunicorn.app.base import BaseApplication

    args = _parse_args(argv)
    issuer = args.issuer or f"http://{args.host}:{args.port[0]}/"
    options = {
        "bind": [f"{args.host}:{port}" for port in args.port],
        "workers": 1,
        "worker_class": "gthread",
        "threads": args.threads,
        "graceful_timeout": 1,
        "accesslog": "-",
        "control_socket_disable": True,
    }

    class _Server(BaseApplication):
        def load_config(self) -> None:
            for name, value in options.items():
                self.cfg.set(name, value)

        def load(self) -> Flask:
            return create_app({"issuer": issuer})

    _Server().run()


if __name__ == "__main__":
    main()
