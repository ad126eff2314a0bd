"""Domain errors: each carries a protocol error code and a client-safe message."""

from __future__ import annotations

import asyncio
import logging

from asyncmy.errors import InterfaceError as AsyncmyInterfaceError
from tortoise.exceptions import DBConnectionError, OperationalError

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


class Internal(ChatError):
    code = "internal"
    http_status = 500


class UnknownEvent(ChatError):
    code = "unknown_event"
    http_status = 404


# What a storage outage looks like from Tortoise and the drivers beneath it. asyncmy's
# InterfaceError is a connection that can no longer be used (e.g. a query cancelled
# by the call time limit); Tortoise does not translate it on rollback.
STORAGE_DOWN = (
    DBConnectionError,
    OperationalError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
    AsyncmyInterfaceError,
)


def client_error(exc: BaseException, where: str) -> ChatError:
    """Turn any exception into the client-safe error to answer with, logging the detail."""
    if isinstance(exc, ChatError):
        return exc
    if isinstance(exc, STORAGE_DOWN):
        logger.error("storage failure in %s: %r", where, exc, exc_info=exc)
        return Unavailable("storage is unavailable, try again later")
    logger.error("unexpected error in %s", where, exc_info=exc)
    return Internal("internal server error")
