"""The client's request body: its framing read once, its size limit applied once.

:func:`client_body` is the body stage of a request. It reads the framing from the one parse
of the request (:class:`~gateway_app.incoming.IncomingRequest`): ``Transfer-Encoding:
chunked`` makes the body unsized, else ``Content-Length`` sizes it (RFC 9112 §6.1-§6.3), and
the route's ``max_body_bytes`` (set when the config is built) is checked there and nowhere
else: a declared length at once, a chunked body as its chunk sizes are parsed
(:func:`gateway_app.worker.limit_declared_body`) and as its bytes are read
(:class:`ClientBody`). The forwarder reads the :class:`ClientBody` it is given and its
:attr:`ClientBody.length`; it parses no header and applies no limit of its own.
"""

from __future__ import annotations

import io
import typing as t

from werkzeug.wsgi import LimitedStream

from .errors import BadRequestError
from .errors import BodyInvalidError
from .errors import GatewayError
from .errors import PayloadTooLargeError
from .worker import limit_declared_body

if t.TYPE_CHECKING:
    from .incoming import IncomingRequest


class ClientBody:
    """The client's body stream, as the forwarder reads it.

    ``length`` is the declared ``Content-Length`` in bytes, or None for a chunked body
    (forwarded unsized). Read errors become 400 ``body_invalid``; more than ``limit`` bytes
    read, 413. A :class:`GatewayError` raised by the server's reader (408 body too slow, 413
    declared too large: :mod:`gateway_app.worker`) passes as it is.

    The WSGI server raises its own exceptions for a malformed chunked body (gunicorn's
    ``InvalidChunkSize``) or a client that stops mid-body (``NoMoreData``, an OSError that
    would otherwise pass for an upstream failure).
    """

    __slots__ = ("_stream", "_left", "length")

    def __init__(self, stream: t.IO[bytes], length: int | None = None, limit: int | None = None) -> None:
        self._stream = stream
        self._left = limit
        self.length = length

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that is left for -1); ``b""`` at the end.

        :raises BodyInvalidError: the server could not read the body whole (400 ``body_invalid``).
        :raises PayloadTooLargeError: more than the limit was read.
        """
        try:
            data = self._stream.read(size)
        except GatewayError:
            raise                      # the server's own verdict: 408 too slow, 413 declared too large
        except Exception as e:
            raise BodyInvalidError(f"the request body could not be read ({type(e).__name__})") from None
        if self._left is not None:
            self._left -= len(data)
            if self._left < 0:
                raise PayloadTooLargeError()
        return data


def client_body(environ: t.Mapping[str, t.Any], request: IncomingRequest, limit: int | None) -> ClientBody | None:
    """The body to forward for ``request``, or None when it has none.

    :param environ: the WSGI environ. Its ``wsgi.input`` is read as it is when the server ends
        the stream itself (``wsgi.input_terminated``), else as werkzeug's ``get_input_stream``
        reads it: at most ``Content-Length`` bytes, and nothing of an unsized body.
    :param limit: the route's ``max_body_bytes`` (bytes; None: no limit).
    :raises BadRequestError: a malformed ``Content-Length`` (RFC 9112 §6.3: 400).
    :raises PayloadTooLargeError: the declared length is over ``limit``.
    """
    terminated = "wsgi.input_terminated" in environ      # the server ends the stream (gunicorn does)
    if "chunked" in request.headers.get("transfer-encoding", "").lower():
        if limit is not None:
            limit_declared_body(environ, limit)    # 413 as soon as the chunk sizes say so
        return ClientBody(environ["wsgi.input"] if terminated else io.BytesIO(), None, limit)
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    length = parse_content_length(declared)
    if limit is not None and length > limit:
        raise PayloadTooLargeError(f"request body larger than {limit} bytes")
    if not length:
        return None
    stream = environ["wsgi.input"]
    return ClientBody(stream if terminated else LimitedStream(stream, length), length)


def parse_content_length(value: str) -> int:
    """A ``Content-Length`` value in bytes: ``1*DIGIT`` (RFC 9110 §8.6).

    :raises BadRequestError: anything else (a sign, spaces, a list).
    """
    if not value.isascii() or not value.isdigit():
        raise BadRequestError("malformed Content-Length header")
    return int(value)
