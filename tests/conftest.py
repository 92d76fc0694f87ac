"""Shared fixtures: apps built from a temporary config directory, a clean environment."""

from __future__ import annotations

import logging
import pathlib
import typing as t

import pytest

from gateway_app import create_app
from gateway_app.observability import configure_logging
from gateway_app.settings import Settings
from tests.factories import write_tree
from tests.support.clocks import FakeClock
from tests.support.recording_upstream import RecordingUpstream

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def _gateway_logging() -> None:
    """Configure gateway_app logging once before the first test, as every app does.

    ``configure_logging`` makes the ``gateway_app`` logger non-propagating; pytest's caplog
    attaches to such loggers only if they are so when a test starts. Done here, a test sees
    ``gateway_app.*`` records in caplog whether or not an earlier test built an app.
    """
    configure_logging(Settings())


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy or gateway settings leak in from the developer's shell."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy",
                 "GATEWAY_CONFIG_DIR", "GATEWAY_REGO_DIR", "GATEWAY_DEBUG_ROUTE"):
        monkeypatch.delenv(name, raising=False)



@pytest.fixture
def clock() -> FakeClock:
    """Epoch seconds that move only when the test says so (:mod:`tests.support.clocks`)."""
    return FakeClock()


@pytest.fixture
def make_app(tmp_path: pathlib.Path) -> t.Callable[..., t.Any]:
    """``make_app({"vs.yaml": ...}, rego={"p.rego": ...}, clock=None, **settings)`` -> a Flask app
    from :func:`gateway_app.create_app`; ``clock`` (epoch seconds) replaces the validators' clock."""

    def factory(conf: t.Mapping[str, str], rego: t.Mapping[str, str] | None = None, *,
                clock: t.Callable[[], float] | None = None, **settings: t.Any) -> t.Any:
        config_dir = write_tree(tmp_path / "conf", conf)
        rego_dir = write_tree(tmp_path / "rego", rego or {})
        options = {"reload_interval": 0, "log_level": "debug", **settings}
        app = create_app(settings=Settings.from_env({}, config_dir=config_dir, rego_dir=rego_dir, **options),
                         clock=clock)
        app.testing = True
        return app

    return factory


class _Collecting(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def access_records() -> t.Iterator[list[logging.LogRecord]]:
    """The test's ``gateway_app.access`` records, in order, each with its ``fields``.

    Collected by a handler on that logger itself: ``configure_logging`` makes ``gateway_app``
    non-propagating, and pytest's caplog only sees such a logger if it was made so before the
    test started, so caplog misses the records of a test that builds the first app.
    """
    records: list[logging.LogRecord] = []
    handler = _Collecting(records)
    access = logging.getLogger("gateway_app.access")
    access.addHandler(handler)
    try:
        yield records
    finally:
        access.removeHandler(handler)


@pytest.fixture
def jwt_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tokens whose signature PyJWT checked during the test, in order."""
    import jwt

    seen: list[str] = []
    decode = jwt.PyJWS.decode_complete

    def counting(self: t.Any, encoded: str, *args: t.Any, **kwargs: t.Any) -> t.Any:
        seen.append(encoded)
        return decode(self, encoded, *args, **kwargs)

    monkeypatch.setattr(jwt.PyJWS, "decode_complete", counting)
    return seen


@pytest.fixture
def recording_upstream() -> t.Iterator[RecordingUpstream]:
    """A raw-socket upstream on 127.0.0.1 that records what it receives and answers as told
    (:mod:`tests.support.recording_upstream`)."""
    with RecordingUpstream() as upstream:
        yield upstream
