"""WSGI entry point: ``gunicorn -c conf/gunicorn.conf.py wsgi:app``.

Config and Rego directories come from ``GATEWAY_CONFIG_DIR`` / ``GATEWAY_REGO_DIR``
(defaults ``conf`` and ``rego``).
"""

from gateway_app import create_app

app = create_app()
