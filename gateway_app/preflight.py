"""The decision on a request's head, before its body is read: the WSGI environ contract between
the worker (:meth:`gateway_app.worker.HeadReadingWorker._preflight`, which asks) and the gateway
(:meth:`gateway_app.gateway.Gateway.handle`, which answers).

The worker calls the application on a request's head alone with ``environ[PREFLIGHT]`` true; the
application answers as it would (a refusal is the request's answer), or sets
``environ[PREFLIGHT]`` to :data:`PREFLIGHT_PASSED` (or :data:`PREFLIGHT_AUTHENTICATED`, with
:data:`PREFLIGHT_PRINCIPAL`) when the request would go on, and the worker reads its body. A
request that passed is recorded when it comes back whole; one the worker ends itself before that
(its body too slow, cut off to make room) is recorded through :data:`PREFLIGHT_UNFINISHED`.
"""

# The environ key the application reads, and the value it sets when the request would go on.
PREFLIGHT = "gateway.preflight"
PREFLIGHT_PASSED = "passed"
# ... and with a validated credential: its body may take the buffers of bodies no credential vouches for
PREFLIGHT_AUTHENTICATED = "authenticated"
# ... and who the credential names (an opaque key, "" for nobody in particular): the body's share of
# the buffers is then counted by it rather than by the client address
PREFLIGHT_PRINCIPAL = "gateway.preflight.principal"
# ... and, for a request that would go on, ``record(status, reason)``: the worker calls it, on its loop's
# thread, when it answers the request itself before the body is whole (408 body_too_slow, 503
# server_busy, ...), so that request has its one access record too; never for a request it serves
PREFLIGHT_UNFINISHED = "gateway.preflight.unfinished"
