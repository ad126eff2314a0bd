"""Configuration from the environment, dev mode, and the chat-server command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from app.config import Config, ConfigError
from tests.support import SECRET


def test_defaults_and_values_from_environment() -> None:
    config = Config.from_env(
        {
            "CHAT_JWT_SECRET": SECRET,
            "CHAT_PORT": "9000",
            "CHAT_HOST": "0.0.0.0",
            "CHAT_DATABASE_URL": "mysql://u:p@db:3306/chat",
            "CHAT_CORS_ORIGINS": "https://a.example, https://b.example",
        }
    )
    assert (config.host, config.port, config.dialect) == ("0.0.0.0", 9000, "mysql")
    assert config.cors_origins == ("https://a.example", "https://b.example")
    assert Config.from_env({"CHAT_JWT_SECRET": SECRET}).database_url.startswith("sqlite://data/")


def test_limits_and_token_checks_from_environment() -> None:
    default = Config.from_env({"CHAT_JWT_SECRET": SECRET})
    assert (default.max_sockets_per_user, default.handshake_timeout_s, default.shutdown_grace_s,
            default.jwt_audience, default.jwt_issuer, default.jwt_leeway_s) == (
        20, 10.0, 10.0, None, None, 0)
    config = Config.from_env({
        "CHAT_JWT_SECRET": SECRET, "CHAT_MAX_SOCKETS_PER_USER": "5",
        "CHAT_HANDSHAKE_TIMEOUT_S": "3", "CHAT_SHUTDOWN_GRACE_S": "30",
        "CHAT_JWT_AUDIENCE": "chat-app", "CHAT_JWT_ISSUER": "https://id.example",
        "CHAT_JWT_LEEWAY_S": "15",
    })
    assert (config.max_sockets_per_user, config.handshake_timeout_s, config.shutdown_grace_s,
            config.jwt_audience, config.jwt_issuer, config.jwt_leeway_s) == (
        5, 3.0, 30.0, "chat-app", "https://id.example", 15)


def test_the_cluster_settings_from_environment() -> None:
    config = Config.from_env({
        "CHAT_JWT_SECRET": SECRET, "CHAT_DATABASE_URL": "mysql://root:@127.0.0.1:3306/chat",
        "CHAT_REDIS_URL": "redis://127.0.0.1:6379/2", "CHAT_INSTANCE_ID": "eu-1.a",
        "CHAT_INSTANCE_TTL_S": "30",
    })
    assert (config.redis_url, config.instance_id, config.instance_ttl_s) == (
        "redis://127.0.0.1:6379/2", "eu-1.a", 30.0)
    # Without CHAT_INSTANCE_ID every process is a new instance, even with the same pid.
    one, two = Config.from_env({"CHAT_JWT_SECRET": SECRET}), Config.from_env({"CHAT_JWT_SECRET": SECRET})
    assert one.instance_id != two.instance_id


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({}, "CHAT_JWT_SECRET"),
        ({"CHAT_JWT_SECRET": "short"}, "CHAT_JWT_SECRET"),
        ({"CHAT_JWT_SECRET": SECRET, "CHAT_PORT": "eighty"}, "CHAT_PORT"),
        ({"CHAT_JWT_SECRET": SECRET, "CHAT_PORT": "70000"}, "CHAT_PORT"),
        ({"CHAT_JWT_SECRET": SECRET, "CHAT_DATABASE_URL": "postgres://x"}, "CHAT_DATABASE_URL"),
        # Several instances on one embedded SQLite file: refused, they need a shared database.
        ({"CHAT_JWT_SECRET": SECRET, "CHAT_REDIS_URL": "redis://127.0.0.1:6379"}, "CHAT_REDIS_URL"),
        ({"CHAT_JWT_SECRET": SECRET, "CHAT_DATABASE_URL": "mysql://root@h/db",
          "CHAT_REDIS_URL": "http://127.0.0.1:6379"}, "CHAT_REDIS_URL"),
        ({"CHAT_JWT_SECRET": SECRET, "CHAT_INSTANCE_TTL_S": "1"}, "CHAT_INSTANCE_TTL_S"),
        ({"CHAT_JWT_SECRET": SECRET, "CHAT_INSTANCE_ID": "a b"}, "CHAT_INSTANCE_ID"),
        ({"CHAT_JWT_SECRET": SECRET, "CHAT_JWT_ALGORITHM": "none"}, "CHAT_JWT_ALGORITHM"),
        ({"CHAT_JWT_ALGORITHM": "RS256"}, "CHAT_JWT_PUBLIC_KEY"),
        ({"CHAT_JWT_SECRET": SECRET, "CHAT_DEV": "maybe"}, "CHAT_DEV"),
        ({"CHAT_JWT_SECRET": SECRET, "CHAT_PRESENCE_SCOPE": "friends"}, "CHAT_PRESENCE_SCOPE"),
        ({"CHAT_JWT_SECRET": SECRET, "CHAT_MAX_SOCKETS_PER_USER": "0"}, "CHAT_MAX_SOCKETS_PER_USER"),
        ({"CHAT_JWT_SECRET": SECRET, "CHAT_HANDSHAKE_TIMEOUT_S": "x"}, "CHAT_HANDSHAKE_TIMEOUT_S"),
        ({"CHAT_JWT_SECRET": SECRET, "CHAT_SHUTDOWN_GRACE_S": "-1"}, "CHAT_SHUTDOWN_GRACE_S"),
        ({"CHAT_JWT_SECRET": SECRET, "CHAT_JWT_LEEWAY_S": "soon"}, "CHAT_JWT_LEEWAY_S"),
    ],
)
def test_bad_configuration_names_the_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        Config.from_env(env)


def test_dev_mode_makes_and_keeps_a_local_secret(tmp_cwd: Path) -> None:
    first = Config.from_env({"CHAT_DEV": "1"})
    second = Config.from_env({"CHAT_DEV": "1"})
    assert first.jwt_secret and first.jwt_secret == second.jwt_secret
    assert (tmp_cwd / "data" / "dev-jwt-secret").read_text().strip() == first.jwt_secret
    assert first.cors_origins == ("*",)


def _cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env={**clean, "PYTHONPATH": str(Path(__file__).parent.parent), **env},
        cwd=cwd, capture_output=True, text=True, timeout=60,
    )


def test_serve_refuses_to_start_without_a_secret(tmp_cwd: Path) -> None:
    result = _cli("serve", env={}, cwd=tmp_cwd)
    assert result.returncode == 2
    assert "CHAT_JWT_SECRET" in result.stderr


def test_token_command_prints_a_token_the_server_accepts(tmp_cwd: Path) -> None:
    result = _cli("token", "alice", "--name", "Alice", env={"CHAT_JWT_SECRET": SECRET}, cwd=tmp_cwd)
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])
    assert (claims["id"], claims["name"]) == ("alice", "Alice")
    assert claims["exp"] > claims["iat"]


def test_migrate_command_builds_the_sqlite_database(tmp_cwd: Path) -> None:
    result = _cli("migrate", env={"CHAT_DEV": "1"}, cwd=tmp_cwd)
    assert result.returncode == 0, result.stderr
    assert (tmp_cwd / "data" / "chat.sqlite3").stat().st_size > 0
    assert "DEV MODE" in result.stderr
    again = _cli("migrate", env={"CHAT_DEV": "1"}, cwd=tmp_cwd)
    assert "none pending" in again.stderr


def test_trusted_proxies_are_addresses_or_networks() -> None:
    config = Config.from_env(
        {"CHAT_JWT_SECRET": SECRET, "CHAT_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1,::1"}
    )
    assert [str(n) for n in config.trusted_proxies] == ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]
    assert Config.from_env({"CHAT_JWT_SECRET": SECRET}).trusted_proxies == ()
    with pytest.raises(ConfigError, match="CHAT_TRUSTED_PROXIES: 'nginx'"):
        Config.from_env({"CHAT_JWT_SECRET": SECRET, "CHAT_TRUSTED_PROXIES": "nginx"})
