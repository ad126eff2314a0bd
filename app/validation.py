"""Checks on values that come from clients: ids, texts, bounds."""

from __future__ import annotations

import re
import unicodedata

from app.errors import InvalidArgument
from app.domain import DISPLAY_NAME_MAX, GROUP_TITLE_MAX, USER_ID_MAX

MESSAGE_MAX_CHARS = 4000


def check_id(value: object, name: str) -> str:
    """An id (of a user, a group, a client's request): a non-empty string of at most 64
    characters with no edge whitespace and no control characters.

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


check_user_id = check_id


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


def check_title(value: object) -> str:
    """A group's title: 1-100 characters, cleaned like a display name."""
    title = display_name(check_text(value, "title", GROUP_TITLE_MAX))
    if not title:
        raise InvalidArgument("title must hold visible characters")
    return title


def check_display_name(value: object) -> str:
    name = display_name(check_text(value, "userName", DISPLAY_NAME_MAX))
    if not name:
        raise InvalidArgument("userName must hold visible characters")
    return name


# A terminal escape sequence (CSI ... final byte, or ESC and one character).
_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-_])")
# Bidirectional overrides, embeddings and isolates, and the implicit marks:
# in a name they reorder the text around it ("evil\u202egnp.exe").
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_SPACES = re.compile(r"\s+")


def display_name(value: str) -> str:
    """A name as people see it: text, not terminal or layout control.

    NFC-normalised (one form for the same letters); terminal escape
    sequences, control characters (newlines included), bidi controls and
    line/paragraph separators removed; runs of white space made one space;
    trimmed; at most DISPLAY_NAME_MAX characters. Joiners stay: emoji
    sequences need them. User ids are never passed through this: an id is
    compared exactly.
    """
    text = _ESCAPE.sub("", unicodedata.normalize("NFC", value))
    text = "".join(
        " " if unicodedata.category(c) in ("Zl", "Zp") or c in "\t\n\r"
        else "" if c in _BIDI or unicodedata.category(c) == "Cc"
        else c
        for c in text
    )
    return _SPACES.sub(" ", text).strip()[:DISPLAY_NAME_MAX]


def check_range(value: int, name: str, low: int, high: int | None = None) -> int:
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise InvalidArgument(f"{name} must be {bound}")
    return value
