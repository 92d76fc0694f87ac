"""Real processes for the e2e tests: the OAuth server and httpbin, once per session.

Every test in this folder is marked ``e2e`` (deselect with ``-m "not e2e"``). When a test
fails, the logs of the servers it used are attached to its report.
"""

from __future__ import annotations

import pathlib
import typing as t

import pytest
import requests

from tests.support.oauth_server import request_token
from tests.support.servers import ServerProcess
from tests.support.servers import httpbin_server
from tests.support.servers import oauth_server

E2E_DIR = pathlib.Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in pathlib.Path(item.path).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> t.Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for name, value in getattr(item, "funcargs", {}).items():
        for server in _servers_in(value):
            report.sections.append((f"{server.name} log ({name}): {server.log_path}", server.log_tail()))


def _servers_in(value: object) -> list[ServerProcess]:
    if isinstance(value, ServerProcess):
        return [value]
    started = getattr(value, "started", None)
    return list(started) if isinstance(started, list) else []


@pytest.fixture(scope="session")
def e2e_log_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("e2e-logs")


@pytest.fixture(scope="session")
def oauth(e2e_log_dir: pathlib.Path) -> t.Iterator[ServerProcess]:
    """The OAuth server (default clients: my-client, jwt-client, jwt-es-client)."""
    with oauth_server(e2e_log_dir) as server:
        yield server


@pytest.fixture(scope="session")
def httpbin(e2e_log_dir: pathlib.Path) -> t.Iterator[ServerProcess]:
    with httpbin_server(e2e_log_dir) as server:
        yield server


@pytest.fixture
def http() -> t.Iterator[requests.Session]:
    """A client session that ignores proxy settings from the environment."""
    with requests.Session() as session:
        session.trust_env = False
        yield session


def token(oauth: ServerProcess, client_id: str, secret: str, scope: str | None = None) -> str:
    """A fresh client_credentials access token from the test OAuth server."""
    return request_token(oauth.url, client_id, secret, scope)["access_token"]
