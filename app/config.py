"""Configuration, read once from the environment into a frozen object."""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

logger = logging.getLogger(__name__)

DATA_DIR = Path("data")
DEFAULT_DATABASE_URL = "sqlite://data/chat.sqlite3"
DEV_SECRET_FILE = DATA_DIR / "dev-jwt-secret"
# PyJWT warns for HMAC keys shorter than the hash output; insist on it up front.
HMAC_MIN_SECRET_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
HMAC_ALGORITHMS = frozenset(HMAC_MIN_SECRET_BYTES)
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512"})
PRESENCE_SCOPES = frozenset({"all", "contacts"})
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://")


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the key."""


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str = DEFAULT_DATABASE_URL
    # Set: several instances share sockets and presence over this Redis (the backplane).
    redis_url: str | None = None
    # This process among the instances: in logs, metrics and Redis presence.
    instance_id: str = field(default_factory=lambda: default_instance_id())
    # An instance whose heartbeat is this old is dead: its users are announced offline.
    instance_ttl_s: float = 15.0
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_algorithm: str = "HS256"
    # When set, a token must carry this `aud` / `iss` (PyJWT checks them).
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    # Seconds of clock skew allowed on `exp` and `nbf`.
    jwt_leeway_s: int = 0
    dev_mode: bool = False
    cors_origins: tuple[str, ...] = ()
    # Who hears presence changes: "contacts" (and subscribers) or "all" (O(N) per change).
    presence_scope: str = "contacts"
    # Per-user budget of client events and connects, shared by all of the
    # user's sockets: a steady rate and a burst on top.
    rate_limit_per_s: float = 20.0
    rate_limit_burst: int = 60
    # Open /chat sockets one user may hold at once (devices and tabs).
    max_sockets_per_user: int = 20
    # An engine.io session that has not joined /chat by then is closed.
    handshake_timeout_s: float = 10.0
    # Engine.IO sessions one client address may hold before joining /chat.
    max_pending_per_address: int = 256
    # A socket whose outgoing queue waits behind more than this (characters of
    # JSON, about bytes) reads too slowly: it is cut off, not buffered.
    max_socket_buffer: int = 1024 * 1024
    # An HTTP request's headers, or a polling POST's body, must arrive within
    # this; an idle keep-alive connection is closed after it.
    http_idle_timeout_s: float = 10.0
    # On SIGTERM: how long calls in flight may take before every socket is closed.
    shutdown_grace_s: float = 10.0
    # permessage-deflate on WebSockets: ~90 KiB per connection for little gain on chat frames.
    ws_compression: bool = False
    # Engine.IO refuses larger packets before they reach a handler.
    max_packet_bytes: int = 64 * 1024
    # Most members a group may have, its creator included.
    max_group_size: int = 1000
    # Longest a client call may take before it answers `unavailable` (a stalled database).
    call_timeout_s: float = 10.0
    # Peers whose X-Forwarded-For is believed (a load balancer): per-address limits
    # then count the client it names, not the balancer.
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    log_level: str = "INFO"
    demo_dir: Path | None = field(default=None)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Build the config from ``CHAT_*`` variables; raise ConfigError naming a bad key."""
        env = os.environ if env is None else env
        dev_mode = _bool(env, "CHAT_DEV", False)
        algorithm = env.get("CHAT_JWT_ALGORITHM", "HS256").strip().upper()
        if algorithm not in HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS:
            raise ConfigError(f"CHAT_JWT_ALGORITHM: unsupported algorithm {algorithm!r}")
        public_key = _public_key(env)
        secret = env.get("CHAT_JWT_SECRET") or None
        cors = env.get("CHAT_CORS_ORIGINS", "*" if dev_mode else "")
        scope = env.get("CHAT_PRESENCE_SCOPE", "contacts").strip().lower()
        if scope not in PRESENCE_SCOPES:
            raise ConfigError(f"CHAT_PRESENCE_SCOPE: must be one of {sorted(PRESENCE_SCOPES)}")
        config = cls(
            host=env.get("CHAT_HOST", "127.0.0.1"),
            port=_int(env, "CHAT_PORT", 8080, 0, 65535),
            database_url=env.get("CHAT_DATABASE_URL") or DEFAULT_DATABASE_URL,
            redis_url=env.get("CHAT_REDIS_URL") or None,
            instance_id=_instance_id(env),
            instance_ttl_s=float(_int(env, "CHAT_INSTANCE_TTL_S", 15, 2, 3600)),
            jwt_secret=secret,
            jwt_public_key=public_key,
            jwt_algorithm=algorithm,
            jwt_audience=env.get("CHAT_JWT_AUDIENCE") or None,
            jwt_issuer=env.get("CHAT_JWT_ISSUER") or None,
            jwt_leeway_s=_int(env, "CHAT_JWT_LEEWAY_S", 0, 0, 3600),
            dev_mode=dev_mode,
            cors_origins=tuple(o.strip() for o in cors.split(",") if o.strip()),
            presence_scope=scope,
            ws_compression=_bool(env, "CHAT_WS_COMPRESSION", False),
            rate_limit_per_s=float(_int(env, "CHAT_RATE_LIMIT_PER_S", 20, 1, 100_000)),
            rate_limit_burst=_int(env, "CHAT_RATE_LIMIT_BURST", 60, 1, 1_000_000),
            max_sockets_per_user=_int(env, "CHAT_MAX_SOCKETS_PER_USER", 20, 1, 100_000),
            handshake_timeout_s=float(_int(env, "CHAT_HANDSHAKE_TIMEOUT_S", 10, 1, 600)),
            max_pending_per_address=_int(
                env, "CHAT_MAX_PENDING_PER_ADDRESS", 256, 1, 1_000_000
            ),
            max_socket_buffer=_int(
                env, "CHAT_MAX_SOCKET_BUFFER", 1024 * 1024, 64 * 1024, 1024**3
            ),
            http_idle_timeout_s=float(_int(env, "CHAT_HTTP_IDLE_TIMEOUT_S", 10, 1, 600)),
            shutdown_grace_s=float(_int(env, "CHAT_SHUTDOWN_GRACE_S", 10, 0, 3600)),
            call_timeout_s=float(_int(env, "CHAT_CALL_TIMEOUT_S", 10, 1, 3600)),
            max_group_size=_int(env, "CHAT_MAX_GROUP_SIZE", 1000, 2, 100_000),
            trusted_proxies=_networks(env, "CHAT_TRUSTED_PROXIES"),
            log_level=env.get("CHAT_LOG_LEVEL", "INFO").upper(),
            demo_dir=Path(env["CHAT_DEMO_DIR"]) if env.get("CHAT_DEMO_DIR") else None,
        )
        return config.validated()

    def validated(self) -> Config:
        """Check cross-field rules; in dev mode, fill in a local JWT secret."""
        if not self.database_url.startswith(("sqlite://", "mysql://")):
            raise ConfigError("CHAT_DATABASE_URL: must start with sqlite:// or mysql://")
        if self.redis_url is not None:
            if not self.redis_url.startswith(REDIS_SCHEMES):
                raise ConfigError(
                    f"CHAT_REDIS_URL: must start with one of {', '.join(REDIS_SCHEMES)}"
                )
            if self.dialect != "mysql":
                # Instances must share one database; an embedded SQLite file is one machine's.
                raise ConfigError(
                    "CHAT_REDIS_URL: several instances need a shared database; "
                    "set CHAT_DATABASE_URL to mysql://…"
                )
        if self.jwt_algorithm in ASYMMETRIC_ALGORITHMS:
            if not self.jwt_public_key:
                raise ConfigError(
                    f"CHAT_JWT_PUBLIC_KEY: required with CHAT_JWT_ALGORITHM={self.jwt_algorithm}"
                )
            return self
        config = self
        if not config.jwt_secret:
            if not config.dev_mode:
                raise ConfigError(
                    "CHAT_JWT_SECRET: required (set it, or CHAT_DEV=1 for a local dev secret)"
                )
            config = replace(config, jwt_secret=dev_secret())
        assert config.jwt_secret is not None
        min_bytes = HMAC_MIN_SECRET_BYTES[config.jwt_algorithm]
        if len(config.jwt_secret.encode()) < min_bytes:
            raise ConfigError(
                f"CHAT_JWT_SECRET: must be at least {min_bytes} bytes for {config.jwt_algorithm}"
            )
        return config

    @property
    def dialect(self) -> str:
        return "mysql" if self.database_url.startswith("mysql://") else "sqlite"


def dev_secret(path: Path = DEV_SECRET_FILE) -> str:
    """Return the dev-mode JWT secret kept under data/, making it on first use."""
    if path.exists():
        secret = path.read_text().strip()
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(64)  # 86 characters: enough for any HMAC algorithm
        path.write_text(secret + "\n")
        path.chmod(0o600)
    logger.warning(
        "DEV MODE: signing tokens with the local secret in %s. Never run like this in "
        "production: set CHAT_JWT_SECRET and leave CHAT_DEV unset.",
        path,
    )
    return secret


def default_instance_id() -> str:
    """Host, pid and a random part: a restarted process is a new instance."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


def _instance_id(env: Mapping[str, str]) -> str:
    raw = env.get("CHAT_INSTANCE_ID", "").strip()
    if not raw:
        return default_instance_id()
    if len(raw) > 64 or not all(c.isalnum() or c in "-_.:" for c in raw):
        raise ConfigError("CHAT_INSTANCE_ID: at most 64 letters, digits and -_.:")
    return raw


def _bool(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{key}: expected a boolean (1/0, true/false), got {raw!r}")


def _int(env: Mapping[str, str], key: str, default: int, low: int, high: int) -> int:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{key}: expected an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{key}: must be between {low} and {high}, got {value}")
    return value


def _networks(
    env: Mapping[str, str], key: str
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Comma-separated addresses or CIDR networks."""
    networks = []
    for item in env.get(key, "").split(","):
        if not item.strip():
            continue
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"{key}: {item.strip()!r} is not an IP address or network") from None
    return tuple(networks)


def _public_key(env: Mapping[str, str]) -> str | None:
    if env.get("CHAT_JWT_PUBLIC_KEY"):
        return env["CHAT_JWT_PUBLIC_KEY"]
    path = env.get("CHAT_JWT_PUBLIC_KEY_FILE")
    if not path:
        return None
    try:
        return Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"CHAT_JWT_PUBLIC_KEY_FILE: cannot read {path}: {e.strerror}") from None
