"""WSGI entry point: ``gunicorn -c conf/gunicorn.conf.py wsgi:app``.

Config and Rego directories come from ``GATEWAY_CONFIG_DIR`` / ``GATEWAY_REGO_DIR``
(defaults ``conf`` and ``rego``). A broken config fails the worker's boot with the rejected
resources' lines and no traceback (:func:`gateway_app.startup.load_app`).
"""

from gateway_app.startup import load_app

app = load_app()
