"""Errors the router reports to clients, in the OpenAI error shape.

Every refusal carries an HTTP status, an OpenAI `type`, the offending `param` where there is
one, and a message that says what is wrong, so SDK users see a useful exception instead of a
hang or a 500.
"""

from __future__ import annotations

import math
from typing import Any

import grpc


class RouterError(Exception):
    """A request the router refuses or could not complete."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.retry_after = retry_after  # seconds; HTTP `Retry-After`, gRPC `retry-after` trailer

    def body(self) -> dict[str, Any]:
        """The JSON body OpenAI clients parse."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> list[tuple[bytes, bytes]]:
        """Extra HTTP headers of the refusal (`Retry-After`, whole seconds)."""
        if self.retry_after is None:
            return []
        return [(b"retry-after", str(max(1, math.ceil(self.retry_after))).encode())]

    def grpc_status(self) -> grpc.StatusCode:
        """The gRPC status closest to the HTTP one."""
        return _GRPC_BY_HTTP.get(self.status, grpc.StatusCode.INTERNAL)


_GRPC_BY_HTTP = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def bad_request(message: str, param: str | None = None) -> RouterError:
    """400 for a malformed or out-of-range request."""
    return RouterError(400, message, param=param)


def model_not_found(model: str) -> RouterError:
    """404 for a model (or adapter) this deployment does not serve."""
    return RouterError(
        404,
        f"The model `{model}` does not exist.",
        param="model",
        code="model_not_found",
    )


def not_found(message: str) -> RouterError:
    """404 for an admin target (worker, request) the router does not know."""
    return RouterError(404, message, code="not_found")


def overloaded(message: str, retry_after: float = 1.0) -> RouterError:
    """429 when admission control refuses more work: the client should back off for
    ``retry_after`` seconds (sent as `Retry-After`)."""
    return RouterError(
        429, message, type="rate_limit_error", code="overloaded", retry_after=retry_after
    )


def slo_unattainable(message: str, retry_after: float) -> RouterError:
    """429 when admission predicts that no worker can meet the request's TTFT target."""
    return RouterError(
        429, message, type="rate_limit_error", code="slo_unattainable", retry_after=retry_after
    )


def unavailable(message: str) -> RouterError:
    """503 when no worker can take the request."""
    return RouterError(503, message, type="server_error", code="no_worker_available")


def upstream_failed(message: str) -> RouterError:
    """502 when a worker failed while serving the request."""
    return RouterError(502, message, type="server_error", code="worker_failed")


class TransportError(Exception):
    """The worker could not be reached or broke the stream (the router's side of the wire)."""


class WorkerRefused(TransportError):
    """The worker refused this one request (its stream is fine): the request's error, never
    the worker's failure. ``message`` is the worker's "CODE: detail"."""

    @property
    def invalid_argument(self) -> bool:
        """Whether the worker found the request itself invalid (a client error)."""
        return str(self).startswith("INVALID_ARGUMENT")

    def to_router_error(self) -> RouterError:
        """400 naming the field for an invalid request, else 502 for this request only."""
        text = str(self)
        if not self.invalid_argument:
            return upstream_failed(f"The worker could not serve this request: {text}")
        detail = text.partition(":")[2].strip()
        param, sep, message = detail.partition(": ")
        if sep and param.isidentifier():
            return bad_request(message, param=param)
        return bad_request(detail or "The worker refused the request as invalid.")
