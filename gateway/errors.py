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
