"""Config resources: load YAML, validate each kind, resolve references into a route table."""
