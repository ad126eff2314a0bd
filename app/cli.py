"""The `chat-server` console script: serve, migrate, token."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import resource
import sys
import threading
from collections.abc import Awaitable, Callable

import uvloop
from aiohttp import web

from app.auth import DEFAULT_TOKEN_TTL_S, TokenVerifier
from app.config import Config, ConfigError
from app.storage.db import APP_LABEL, migrate, migrations_location
from app.devcluster import run_cluster
from app.errors import InvalidArgument
from app.logs import configure_logging
from app.main import create_app
from handlers.http import AccessLogger

logger = logging.getLogger("chat-server")

# Connections the kernel queues before we accept them (capped by net.core.somaxconn).
# aiohttp's 128 turns a reconnect storm into SYN retries of 1, 3, 7, 15 s.
LISTEN_BACKLOG = 4096
SHUTDOWN_TAIL_S = 0.5
# Past the grace plus this, a shutdown that is still running is cut short. The
# closing steps are bounded to finish before it (app/shutdown.py, CLOSING_S):
# this timer is the last resort, and it exits with status 1 so the overrun shows.
SHUTDOWN_OVERRUN_S = 0.95


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chat-server", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="serve on CHAT_HOST:CHAT_PORT")
    sub.add_parser("migrate", help="apply database migrations")
    cluster = sub.add_parser(
        "cluster", help="dev: nginx + two instances on MariaDB and Redis (make cluster)"
    )
    cluster.add_argument(
        "--check", action="store_true", help="only test the nginx config it would run, and exit"
    )
    token = sub.add_parser("token", help="print a signed token for a user")
    token.add_argument("user_id")
    token.add_argument("--name", help="display name claim")
    token.add_argument("--ttl", type=int, default=DEFAULT_TOKEN_TTL_S, help="lifetime in seconds")
    args = parser.parse_args(argv)

    configure_logging("INFO")
    if args.command == "cluster":
        return run_cluster(check=args.check)
    try:
        config = Config.from_env()
    except ConfigError as e:
        print(f"chat-server: configuration error: {e}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.instance_id if config.redis_url else None)

    if args.command == "serve":
        soft, hard = raise_open_file_limit()
        logger.info("open files: up to %d (hard limit %d)", soft, hard)
        logger.info(
            "serving on http://%s:%s (database: %s, %s)", config.host, config.port, config.dialect,
            f"instance {config.instance_id} over Redis" if config.redis_url else "one instance",
        )
        app = create_app(config)
        tune_gc(app)
        app.on_shutdown.insert(0, _shutdown_deadline(config.shutdown_grace_s + SHUTDOWN_OVERRUN_S))
        # uvloop's event loop: the profile spends much of each message in loop plumbing.
        web.run_app(
            app, host=config.host, port=config.port, print=None,
            loop=uvloop.new_event_loop(), backlog=LISTEN_BACKLOG,
            access_log_class=AccessLogger,
            # Also the deadline for a request's headers: a slow-loris connection
            # (headers a byte at a time, or none) is closed after it.
            keepalive_timeout=config.http_idle_timeout_s,
            # Sockets are closed by the drain (app.main.drain_hub) within the grace;
            # this is only the last wait for HTTP requests still being answered.
            shutdown_timeout=SHUTDOWN_TAIL_S,
        )
        return 0
    if args.command == "migrate":
        # aerich finds nothing pending in a missing folder and says "none pending":
        # an install without its migrations would leave the database empty, quietly.
        folder = migrations_location(config) / APP_LABEL
        if not any(folder.glob("[0-9]*_*.py")):
            print(f"chat-server: no {config.dialect} migrations in {folder}: this installation "
                  "is incomplete (reinstall the package)", file=sys.stderr)
            return 2
        applied = asyncio.run(migrate(config))
        logger.info("migrations applied: %s", ", ".join(applied) if applied else "none pending")
        return 0
    try:
        print(TokenVerifier(config).issue(args.user_id, args.name, args.ttl))
    except (InvalidArgument, RuntimeError) as e:
        print(f"chat-server: {e}", file=sys.stderr)
        return 2
    return 0


def raise_open_file_limit() -> tuple[int, int]:
    """Raise this process's soft limit on open files to the hard one; return both.

    Every socket is a file descriptor: at Debian's default soft limit of
    1,024, a few hundred idle connections are enough to make every new
    request fail. The hard limit is what the operator allows.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-file limit to %d: %s", hard, exc)
    return soft, hard


# The cyclic garbage collector's thresholds (Python's: 700, 10, 10). At those,
# py-spy and gc.callbacks showed the collector taking 30% of the CPU under the
# group load (1,000 sockets): ~2 full collections a second, 55 ms each over
# 250,000 objects, because the objects of a call in flight (futures, packets,
# batch rows) outlive 700 allocations and reach the old generation. Here a
# young collection comes every 50,000 net allocations (a few MB of garbage at
# most), and a full one after 10 of the middle ones.
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc(app: web.Application) -> None:
    """Collect less often, and never scan what startup built (modules, the ORM, config).

    gc.freeze() after startup moves every object alive then out of the
    collector's sight: they live as long as the process, and full collections
    then scan ~70,000 objects instead of ~250,000.
    """
    gc.set_threshold(*GC_THRESHOLDS)

    async def freeze(app: web.Application) -> None:  # after every cleanup context has opened
        gc.collect()
        gc.freeze()

    app.on_startup.append(freeze)


def _shutdown_deadline(limit_s: float) -> Callable[[web.Application], Awaitable[None]]:
    """On SIGTERM, a timer that ends the process if shutdown is still running after `limit_s`.

    Every step of the shutdown is bounded, but a stalled disk or a driver
    thread stuck in a system call can keep the process alive (aiosqlite's
    threads are not daemons). An orchestrator waiting on us deserves the
    promised exit time, so the last resort is os._exit, with a log line and
    exit status 1 so the overrun shows.
    """

    async def arm(app: web.Application) -> None:
        def overrun() -> None:
            logger.error("shutdown: still running %.1f s after SIGTERM; exiting now", limit_s)
            logging.shutdown()
            os._exit(1)

        timer = threading.Timer(limit_s, overrun)
        timer.daemon = True
        timer.start()

    return arm


if __name__ == "__main__":
    sys.exit(main())
