"""bench.worker_path drives both worker classes through their pool-thread entry; it must keep working."""

from __future__ import annotations

import pytest
from gunicorn.workers import gthread

from bench.worker_path import serve
from gateway_app.worker import HeadReadingWorker


@pytest.mark.parametrize("kind", [HeadReadingWorker, gthread.ThreadWorker], ids=["head-reading", "gthread"])
def test_each_worker_class_serves_kept_alive_requests_on_one_connection(kind):
    """``serve`` raises when a worker closes the connection or answers anything but the same 200."""
    assert serve(kind, 50) > 0
