"""Errors a client can act on. Each carries the `extensions.code` of the GraphQL contract."""


class GatewayError(Exception):
    code = "INTERNAL_SERVER_ERROR"

    def __init__(self, message: str, **extensions: object) -> None:
        super().__init__(message)
        self.message = message
        self.extensions = extensions


class BadUserInput(GatewayError):
    code = "BAD_USER_INPUT"


class NotFound(GatewayError):
    code = "NOT_FOUND"


class Conflict(GatewayError):
    code = "CONFLICT"


class Unauthenticated(GatewayError):
    code = "UNAUTHENTICATED"


class Forbidden(GatewayError):
    code = "FORBIDDEN"


class PayloadTooLarge(GatewayError):
    code = "PAYLOAD_TOO_LARGE"


class RateLimited(GatewayError):
    code = "RATE_LIMITED"


class ServiceUnavailable(GatewayError):
    """The database or the object store could not be reached (restarting, overloaded, a dropped
    connection): the request may succeed when sent again. Always `retryable`."""

    code = "SERVICE_UNAVAILABLE"

    def __init__(self, message: str, **extensions: object) -> None:
        super().__init__(message, **{**extensions, "retryable": True})


class CursorExpired(GatewayError):
    """A subscription's `after` is older than the event log keeps: the client reloads instead."""

    code = "CURSOR_EXPIRED"


class NotRun(GatewayError):
    """A root mutation field after one that failed: it was not run (nothing of it was written)."""

    code = "NOT_RUN"
