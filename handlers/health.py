"""Operational HTTP endpoints: liveness, readiness, metrics."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from app.appkeys import BACKPLANE, CONFIG, METRICS, NAMESPACE, READINESS, STORE

logger = logging.getLogger(__name__)

# The database must answer a read, and commit a write batch, within this for the
# instance to be ready: under the 2 s a load balancer's check usually allows,
# and far above a healthy round trip or commit.
READY_TIMEOUT_S = 1.5

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}
    if request.app[NAMESPACE].draining:
        checks["shutdown"] = "draining"  # a load balancer should stop sending clients here
    store = request.app[STORE]
    # Reads and writes can fail apart: a frozen write connection, a lock held by a
    # dead session, a read-only database all still answer SELECT 1.
    read, write = await asyncio.gather(
        asyncio.wait_for(store.ping(), READY_TIMEOUT_S),
        store.probe_write(READY_TIMEOUT_S),
        return_exceptions=True,
    )
    if isinstance(read, BaseException):
        checks["database"] = _said(request.app, "database", "unreachable", read)
    elif isinstance(write, BaseException):
        checks["database"] = _said(request.app, "database", "writes failing", write)
    else:
        checks["database"] = _said(request.app, "database", "ok")
    ready = all(v == "ok" for v in checks.values())
    backplane = request.app.get(BACKPLANE)
    if backplane is not None:
        # Reported, never a reason to stop sending clients here: without Redis an
        # instance still stores and delivers to its own sockets (README, Deployment).
        try:
            await asyncio.wait_for(backplane.ping(), READY_TIMEOUT_S)
            checks["redis"] = _said(request.app, "redis", "ok" if backplane.healthy else "recovering")
        except Exception as exc:
            checks["redis"] = _said(request.app, "redis", "unreachable", exc)
    body: dict[str, object] = {"status": "ready" if ready else "unavailable", "checks": checks}
    if backplane is not None:
        body["instance"] = request.app[CONFIG].instance_id  # which one a load balancer chose
    return web.json_response(
        body,
        status=200 if ready else 503,
    )


def _said(app: web.Application, check: str, value: str, why: BaseException | None = None) -> str:
    """Log a check's value when it changes: a balancer asks every second or more often."""
    said = app[READINESS]
    if said.get(check, "ok") != value:
        if value == "ok":
            logger.info("readiness: %s ok again", check)
        else:
            logger.warning("readiness: %s %s: %r", check, value, why)
    said[check] = value
    return value


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    return web.Response(body=m.render(), headers={"Content-Type": m.content_type})
