"""Checks on values that come from clients: ids, texts, bounds."""

from __future__ import annotations

from app.errors import InvalidArgument
from models import DISPLAY_NAME_MAX, USER_ID_MAX

MESSAGE_MAX_CHARS = 4000


def check_user_id(value: object, name: str) -> str:
    """A user id: a non-empty string of at most 64 characters with no edge whitespace.

    Edge whitespace is refused because MySQL's PAD SPACE collations would
    otherwise make "bob" and "bob " the same user.
    """
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{name} must be a non-empty string")
    if len(value) > USER_ID_MAX:
        raise InvalidArgument(f"{name} must be at most {USER_ID_MAX} characters")
    if value != value.strip() or not value.isprintable():
        raise InvalidArgument(f"{name} must not contain control characters or edge whitespace")
    return value


def check_text(value: object, name: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(f"{name} must not be empty")
    if len(value) > limit:
        raise InvalidArgument(f"{name} must be at most {limit} characters")
    if "\x00" in value:
        raise InvalidArgument(f"{name} must not contain NUL characters")
    if not is_unicode_text(value):
        raise InvalidArgument(f"{name} must be valid Unicode text (no lone surrogates)")
    return value


def is_unicode_text(value: str) -> bool:
    """Whether `value` can be stored: JSON lets a client send a lone surrogate
    (an unpaired "\\ud800"), which no database encoding accepts. Checked before a
    write joins a group commit, where it would fail its neighbours too."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_display_name(value: object) -> str:
    return check_text(value, "userName", DISPLAY_NAME_MAX).strip()


def check_range(value: int, name: str, low: int, high: int | None = None) -> int:
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise InvalidArgument(f"{name} must be {bound}")
    return value
