"""JWT verification and (for dev and the CLI) issuing."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from app.config import HMAC_ALGORITHMS, Config
from app.errors import Unauthorized
from app.validation import check_user_id, display_name, is_unicode_text

logger = logging.getLogger(__name__)

DEFAULT_TOKEN_TTL_S = 24 * 3600
NAME_CLAIM_MAX = 100
AVATAR_CLAIM_MAX = 1024


# What a refused token is told, most specific first (the signature and expiry
# errors are DecodeErrors too).
_REFUSALS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.InvalidSignatureError, "invalid token signature"),
    (jwt.InvalidAlgorithmError, "token algorithm not allowed"),
    (jwt.InvalidAudienceError, "token audience not accepted"),
    (jwt.InvalidIssuerError, "token issuer not accepted"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.DecodeError, "malformed token"),
)


@dataclass(frozen=True)
class Identity:
    user_id: str
    name: str | None
    avatar: str | None
    expires_at: float


class TokenVerifier:
    """Verifies tokens with the one algorithm the config pins; never the token's header."""

    def __init__(self, config: Config) -> None:
        self._algorithm = config.jwt_algorithm
        key = config.jwt_secret if config.jwt_algorithm in HMAC_ALGORITHMS else config.jwt_public_key
        assert key, "Config.validated() guarantees a key"
        self._key: str = key
        self._can_issue = config.jwt_algorithm in HMAC_ALGORITHMS
        self._audience = config.jwt_audience
        self._issuer = config.jwt_issuer
        self._leeway = config.jwt_leeway_s
        self._required = ["exp"] + (["aud"] if self._audience else []) + (
            ["iss"] if self._issuer else []
        )

    def verify(self, token: object) -> Identity:
        if not isinstance(token, str) or not token.strip():
            raise Unauthorized("missing token")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                # Without a configured audience a token's `aud` is not ours to judge.
                options={"require": self._required, "verify_aud": self._audience is not None},
            )
        except jwt.MissingRequiredClaimError as e:
            raise Unauthorized(f"token has no {e.claim} claim") from None
        except Exception as e:  # any library complaint is a bad token, said in client-safe words
            for kind, why in _REFUSALS:
                if isinstance(e, kind):
                    raise Unauthorized(why) from None
            logger.debug("token rejected", exc_info=True)
            raise Unauthorized("invalid token") from None
        return _identity(claims, self._leeway)

    def issue(self, user_id: str, name: str | None = None, ttl_s: int = DEFAULT_TOKEN_TTL_S) -> str:
        if not self._can_issue:
            raise RuntimeError("tokens can only be issued with an HMAC (shared secret) algorithm")
        check_user_id(user_id, "userId")
        now = int(time.time())
        claims: dict[str, Any] = {"id": user_id, "iat": now, "exp": now + ttl_s}
        if self._audience:
            claims["aud"] = self._audience
        if self._issuer:
            claims["iss"] = self._issuer
        if name:
            claims["name"] = name
        return jwt.encode(claims, self._key, algorithm=self._algorithm)


def _identity(claims: Mapping[str, Any], leeway_s: int = 0) -> Identity:
    user_id = _user_id(claims)
    if user_id is None:
        raise Unauthorized("token has no user id")
    try:
        check_user_id(user_id, "id")
    except ValueError:
        raise Unauthorized("token user id is not a valid id") from None
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        raise Unauthorized("token exp claim is not a number")
    return Identity(
        user_id=user_id,
        name=_optional_name(claims.get("name")),
        avatar=_optional_text(claims.get("avatar"), AVATAR_CLAIM_MAX),
        # The session ends when the token stops being accepted: exp plus the leeway.
        expires_at=float(exp) + leeway_s,
    )


def _user_id(claims: Mapping[str, Any]) -> str | None:
    for claim in ("id", "sub"):
        value = claims.get(claim)
        if isinstance(value, bool) or value is None or value == "":
            continue
        if isinstance(value, int):
            return str(value)
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return str(int(value))
        if isinstance(value, str):
            return value
        return None
    return None


def _optional_name(value: object) -> str | None:
    """The name claim as a display name (see app.validation.display_name), or dropped."""
    text = _optional_text(value, NAME_CLAIM_MAX * 4)
    return (display_name(text) or None) if text is not None else None


def _optional_text(value: object, limit: int) -> str | None:
    """An optional claim (name, avatar): dropped when it is not text we can store."""
    if not isinstance(value, str) or not value.strip() or not is_unicode_text(value):
        return None
    return value.strip()[:limit]


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <jwt>`` header, if that is what it is."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
