"""Operational HTTP endpoints: liveness, readiness, metrics."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from app.appkeys import BACKPLANE, CONFIG, METRICS, NAMESPACE, STORE

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 2.0
# A write batch must commit within this for the instance to be ready: under the
# 2 s a load balancer's check usually allows, and far above a healthy commit.
WRITE_PROBE_S = 1.5

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
        store.probe_write(WRITE_PROBE_S),
        return_exceptions=True,
    )
    if isinstance(read, BaseException):
        logger.warning("readiness: database unreachable: %r", read)
        checks["database"] = "unreachable"
    elif isinstance(write, BaseException):
        logger.warning("readiness: writes do not commit: %r", write)
        checks["database"] = "writes failing"
    else:
        checks["database"] = "ok"
    ready = all(v == "ok" for v in checks.values())
    backplane = request.app.get(BACKPLANE)
    if backplane is not None:
        # Reported, never a reason to stop sending clients here: without Redis an
        # instance still stores and delivers to its own sockets (README, Deployment).
        try:
            await asyncio.wait_for(backplane.ping(), READY_TIMEOUT_S)
            checks["redis"] = "ok" if backplane.healthy else "recovering"
        except Exception as exc:
            logger.warning("readiness: Redis unreachable: %r", exc)
            checks["redis"] = "unreachable"
    body: dict[str, object] = {"status": "ready" if ready else "unavailable", "checks": checks}
    if backplane is not None:
        body["instance"] = request.app[CONFIG].instance_id  # which one a load balancer chose
    return web.json_response(
        body,
        status=200 if ready else 503,
    )


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    return web.Response(body=m.render(), headers={"Content-Type": m.content_type})
