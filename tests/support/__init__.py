"""Helpers for tests, the demo and benchmarks: a real OAuth 2.0 server, a process harness, a
recording upstream, and the test doubles every test shares (``clocks.FakeClock``,
``caches.RecordingCache``)."""
