"""The decision on a request's head, before its body is read: the WSGI environ contract between
the worker (:meth:`gateway_app.worker.HeadReadingWorker._preflight`, which asks) and the gateway
(:meth:`gateway_app.gateway.Gateway.handle`, which answers).

The worker calls the application on a request's head alone with ``environ[PREFLIGHT]`` true; the
application answers as it would (a refusal is the request's answer), or sets
``environ[PREFLIGHT]`` to :data:`PREFLIGHT_PASSED` (or :data:`PREFLIGHT_AUTHENTICATED`, with
:data:`PREFLIGHT_PRINCIPAL`) when the request would go on, and the worker reads its body.
"""

# The environ key the application reads, and the value it sets when the request would go on.
PREFLIGHT = "gateway.preflight"
PREFLIGHT_PASSED = "passed"
# ... and with a validated credential: its body may take the buffers of bodies no credential vouches for
PREFLIGHT_AUTHENTICATED = "authenticated"
# ... and who the credential names (an opaque key, "" for nobody in particular): the body's share of
# the buffers is then counted by it rather than by the client address
PREFLIGHT_PRINCIPAL = "gateway.preflight.principal"
