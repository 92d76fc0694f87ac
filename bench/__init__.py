"""The gateway benchmark: ``bash bench/run.sh`` (see bench/run.py)."""
