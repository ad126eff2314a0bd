"""What a storage failure looks like, whatever driver raised it.

Above the storage layer a failure of the database is one thing, ``Unavailable``.
Drivers raise many things for it: their own error classes, OSError and
TimeoutError from the network, and sometimes plain RuntimeError or
AttributeError from a transport that died under them (uvloop's "Transport does
not expose socket instance" when a connection is refused mid-handshake). An
exception counts as a storage failure when its class is one of the known
ones, or when it was raised inside the driver or the event loop's transport
code; anything raised by this project's own code is a bug and stays one.
"""

from __future__ import annotations

import sqlite3
from types import TracebackType

from asyncmy.errors import MySQLError
from tortoise.exceptions import DBConnectionError, OperationalError, TransactionManagementError

# MySQLError covers asyncmy's InterfaceError (a connection that can no longer be
# used, e.g. after a cancelled query), which Tortoise does not translate on
# rollback, and a 2006 "server has gone away" from any statement.
STORAGE_ERRORS: tuple[type[BaseException], ...] = (
    DBConnectionError,
    OperationalError,
    TransactionManagementError,
    MySQLError,
    sqlite3.Error,
    OSError,
    TimeoutError,
    EOFError,
)

# Modules whose code talks to the database or the network on its behalf.
DRIVER_MODULES = ("asyncmy", "aiosqlite", "sqlite3", "uvloop", "asyncio.")


def is_storage_failure(exc: BaseException) -> bool:
    if isinstance(exc, STORAGE_ERRORS):
        return True
    return _raised_in_driver(exc.__traceback__)


def _raised_in_driver(tb: TracebackType | None) -> bool:
    innermost = None
    while tb is not None:
        innermost = tb
        tb = tb.tb_next
    if innermost is None:
        return False
    frame = innermost.tb_frame
    module = str(frame.f_globals.get("__name__", ""))
    filename = frame.f_code.co_filename
    return module.startswith(DRIVER_MODULES) or any(
        f"/{name.rstrip('.')}/" in filename for name in DRIVER_MODULES
    )
