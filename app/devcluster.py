"""`chat-server cluster` (`make cluster`): nginx in front of two instances, on one machine.

For trying the scale-out by hand: two `chat-server serve` processes in dev
mode on one MariaDB database and one Redis, behind Debian's nginx with the
shipped config (docs/deploy/nginx.conf), the demo page reachable through
nginx. Ctrl-C stops all three (the instances drain as on SIGTERM).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from app.config import dev_secret

# The shipped site config: app/deploy/ in an installed package (pyproject.toml
# installs docs/deploy there), docs/deploy/ in a checkout.
NGINX_SITES = (
    Path(__file__).resolve().parent / "deploy" / "nginx.conf",
    Path(__file__).resolve().parent.parent / "docs" / "deploy" / "nginx.conf",
)
SHIPPED_LISTEN = 8080
SHIPPED_BACKENDS = (8081, 8082)
DEFAULT_DATABASE_URL = "mysql://root:@127.0.0.1:3306/chat_cluster"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def shipped_site() -> Path:
    """The shipped nginx site config; FileNotFoundError, saying where it looked, if absent."""
    for candidate in NGINX_SITES:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        "the shipped nginx config (docs/deploy/nginx.conf) is not installed: looked for "
        + " and ".join(str(p) for p in NGINX_SITES)
        + "; reinstall the package (pip install .) or run from a checkout"
    )


def nginx_config(path: Path, listen: int, backends: list[int]) -> Path:
    """Write a runnable nginx.conf at `path` around the shipped site config.

    Only the ports of the shipped file change; the rest (pid, logs, temp
    files) goes under path's directory, so nginx runs without root.
    """
    shipped = shipped_site()
    site = shipped.read_text()
    site = site.replace(f"listen {SHIPPED_LISTEN};", f"listen 127.0.0.1:{listen};")
    shipped_servers = [
        line for line in site.splitlines() if line.strip().startswith("server 127.0.0.1:")
    ]
    options = shipped_servers[0].split(None, 2)[2]  # what follows the address
    servers = "\n".join(f"    server 127.0.0.1:{port} {options}" for port in backends)
    site = site.replace("\n".join(shipped_servers), servers)
    root = path.parent
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    (root / "site.conf").write_text(site)
    path.write_text(
        f"""# Written by chat-server cluster; the site itself is {shipped}.
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{
    worker_connections 16384;
}}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    include {root}/site.conf;
}}
"""
    )
    return path


async def _create_database(url: str) -> None:
    import asyncmy

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    conn = await asyncmy.connect(
        host=parts.hostname or "127.0.0.1", port=parts.port or 3306,
        user=parts.username or "root", password=parts.password or "", connect_timeout=5,
    )
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4")
    finally:
        conn.close()


def _check_config(nginx: str, workdir: Path) -> int:
    """`nginx -t` on the config the cluster would run; nothing is started."""
    conf = nginx_config(workdir / "nginx.conf", SHIPPED_LISTEN, list(SHIPPED_BACKENDS))
    tested = subprocess.run(
        [nginx, "-t", "-q", "-p", str(conf.parent), "-c", str(conf)],
        capture_output=True, text=True, check=False,
    )
    if tested.returncode != 0:
        print(f"chat-server cluster: nginx refuses {conf}:\n{tested.stderr}", file=sys.stderr)
        return 2
    print(f"chat-server cluster: nginx accepts {conf} (site: {shipped_site()})")
    return 0


def run_cluster(workdir: Path = Path("data/cluster"), check: bool = False) -> int:
    """Run the cluster until Ctrl-C; with `check`, only test the nginx config it would run."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        print("chat-server cluster: nginx is required (apt-get install nginx)", file=sys.stderr)
        return 2
    try:
        shipped_site()
    except FileNotFoundError as e:
        print(f"chat-server cluster: {e}", file=sys.stderr)
        return 2
    if check:
        return _check_config(nginx, workdir.resolve())
    database = os.environ.get("CHAT_DATABASE_URL", DEFAULT_DATABASE_URL)
    redis = os.environ.get("CHAT_REDIS_URL", DEFAULT_REDIS_URL)
    if not database.startswith("mysql://"):
        print("chat-server cluster: CHAT_DATABASE_URL must be mysql://", file=sys.stderr)
        return 2
    asyncio.run(_create_database(database))
    dev_secret()  # made once here: two instances making it at once could differ
    # Ctrl-C, or SIGTERM, stops the whole cluster (a shell's `&` leaves SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    server = str(Path(sys.executable).with_name("chat-server"))
    env = {**os.environ, "CHAT_DEV": "1", "CHAT_DATABASE_URL": database, "CHAT_REDIS_URL": redis}
    # Both instances migrate at once, as two deploying instances would: the lock makes one wait.
    migrations = [subprocess.Popen([server, "migrate"], env=env) for _ in SHIPPED_BACKENDS]
    if any(m.wait() != 0 for m in migrations):
        return 1
    procs = [
        subprocess.Popen(
            [server, "serve"],
            env={**env, "CHAT_PORT": str(port), "CHAT_INSTANCE_ID": name},
        )
        for name, port in zip("ab", SHIPPED_BACKENDS)
    ]
    conf = nginx_config(workdir.resolve() / "nginx.conf", SHIPPED_LISTEN, list(SHIPPED_BACKENDS))
    procs.append(subprocess.Popen([nginx, "-p", str(conf.parent), "-c", str(conf), "-g", "daemon off;"]))
    print(
        f"\nchat-server cluster: nginx on http://127.0.0.1:{SHIPPED_LISTEN} in front of "
        f"instance a (:{SHIPPED_BACKENDS[0]}) and b (:{SHIPPED_BACKENDS[1]}),\n"
        f"database {database}, Redis {redis}. Open the demo through nginx in two browsers;\n"
        "both land on one instance (sticky by address): open the other one's port directly\n"
        "to chat across instances. Ctrl-C stops everything.\n",
        flush=True,
    )
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
    return 0
