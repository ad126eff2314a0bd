"""Logging for the server process: one format, and no client bytes in tracebacks."""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class ClientMistakeFilter(logging.Filter):
    """Turn aiohttp's report of a malformed HTTP request into one plain line.

    aiohttp logs a request it cannot parse as an ERROR with a traceback whose
    message quotes the offending bytes: an oversize ``Authorization`` header
    lands in the log with the token in it. It is the client's mistake, not a
    server bug: one warning line with the error's kind, none of its bytes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            said = record.getMessage()
            record.msg = "%s: %s (HTTP %s)"
            record.args = (said, type(exc).__name__, exc.code)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def configure_logging(level: str | int = "INFO", instance: str | None = None) -> None:
    """One format for every logger; with several instances, each line names its instance."""
    fmt = FORMAT if instance is None else FORMAT.replace("%(name)s", f"[{instance}] %(name)s")
    logging.basicConfig(level=level, format=fmt, force=True)
    logging.getLogger().setLevel(level)
    logging.getLogger("aiohttp.server").addFilter(ClientMistakeFilter())
