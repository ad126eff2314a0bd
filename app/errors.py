"""Domain errors: each carries a protocol error code and a client-safe message."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class ChatError(Exception):
    code = "internal"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def envelope(self) -> dict[str, object]:
        return {"ok": False, "error": {"code": self.code, "message": self.message}}


class InvalidArgument(ChatError, ValueError):
    code = "invalid_argument"
    http_status = 400


class Unauthorized(ChatError):
    code = "unauthorized"
    http_status = 401


class Forbidden(ChatError):
    code = "forbidden"
    http_status = 403


class NotFound(ChatError):
    code = "not_found"
    http_status = 404


class RateLimited(ChatError):
    code = "rate_limited"
    http_status = 429


class Unavailable(ChatError):
    code = "unavailable"
    http_status = 503


class OutcomeUnknown(Unavailable):
    """A write's COMMIT went unanswered and the server shut down before learning its outcome.

    The write may or may not be stored, so no answer may be given: the edge
    sends none (a retry with the same clientMessageId is safe either way).
    """


class Internal(ChatError):
    code = "internal"
    http_status = 500


class UnknownEvent(ChatError):
    code = "unknown_event"
    http_status = 404


def client_error(exc: BaseException, where: str) -> ChatError:
    """Turn any exception into the client-safe error to answer with, logging a bug's detail.

    Storage failures arrive here already as :class:`Unavailable` (the storage
    layer translates its own); anything that is not a ChatError is a server bug.
    """
    if isinstance(exc, ChatError):
        return exc
    logger.error("unexpected error in %s", where, exc_info=exc)
    return Internal("internal server error")
