"""End-to-end tests: real gunicorn processes on 127.0.0.1."""
