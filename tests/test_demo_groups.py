"""Groups in the demo page (client-demo/index.html) in Chromium against the real server.

The browser side is client-demo/browser/demo-groups.mjs (playwright-core driving Debian's
Chromium, three contexts: alice, bob, carol). The server runs in-process in dev mode on
SQLite, like the direct-chat browser test in tests/test_js_clients.py: the page does not
know which database is behind it, and the group rules themselves are tested on both.
Screenshots land in client-demo/browser/screenshots/ (git ignores it) unless
CHAT_SCREENSHOT_DIR says otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
import pytest

from tests.support import SECRET, ServerFactory, make_token, service_missing
from tests.test_js_clients import CHROMIUM, CLIENTS, require_node, run, url

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
SHOTS = Path(os.environ.get("CHAT_SCREENSHOT_DIR") or CLIENTS / "browser" / "screenshots")


@SQLITE_ONLY
async def test_a_group_of_three_chats_in_the_demo_page_with_read_by_counts(
    start_server: ServerFactory,
) -> None:
    node = require_node()
    if not Path(CHROMIUM).exists():
        service_missing("Chromium", f"{CHROMIUM} not found; apt-get install chromium")
    screenshot = SHOTS / "demo-group-alice.png"
    screenshot.unlink(missing_ok=True)  # a stale one must not pass for this run's
    server = await start_server(dev_mode=True)
    out = await run(
        node, "browser/demo-groups.mjs",
        env={"CHAT_URL": url(server), "CHAT_SECRET": SECRET, "CHAT_CHROMIUM": CHROMIUM,
             "CHAT_SCREENSHOT_DIR": str(SHOTS)},
    )
    assert "demo-groups: ok" in out, out
    assert screenshot.is_file()

    # What the pages showed is what the server holds: one group (the refused CreateGroup
    # made none), alice and dave left in it after carol left and bob was removed.
    headers = {"Authorization": f"Bearer {make_token('alice')}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(f"{url(server)}/api/conversations") as r:
            assert r.status == 200
            groups = [c for c in (await r.json())["conversations"] if c["kind"] == "group"]
        assert [(g["name"], g["memberCount"]) for g in groups] == [("Care team", 2)]
        async with http.get(f"{url(server)}/api/groups/{groups[0]['id']}") as r:
            members = {m["userId"]: m["role"] for m in (await r.json())["members"]}
        assert members == {"alice": "admin", "dave": "member"}
