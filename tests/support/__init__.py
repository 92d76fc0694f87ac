"""Helpers for tests, the demo and benchmarks: a real OAuth 2.0 server and a process harness."""
