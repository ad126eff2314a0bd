"""Sync cursors: opaque strings that round-trip, order correctly, and refuse forgeries."""

from __future__ import annotations

import pytest

from app.domain import START, ChangePosition
from app.errors import InvalidArgument


def test_a_cursor_round_trips() -> None:
    for position in (START, ChangePosition(1, 1), ChangePosition(2**63 - 1, 2**63 - 1)):
        assert ChangePosition.decode(position.encode()) == position


def test_no_cursor_means_from_the_beginning() -> None:
    assert ChangePosition.decode(None) == START


def test_positions_order_by_change_then_row() -> None:
    assert ChangePosition(1, 9) < ChangePosition(2, 1) < ChangePosition(2, 2)


@pytest.mark.parametrize(
    "cursor", ["", "1", "1.", ".1", "a.b", "-1.2", "1.2.3", " 1.2", "1.2\n", "1" * 20 + ".1",
     f"{2**63}.1", "\u0661.2"]
)
def test_anything_this_server_did_not_return_is_invalid(cursor: str) -> None:
    with pytest.raises(InvalidArgument):
        ChangePosition.decode(cursor)
