"""The client package as a newcomer gets it: `npm pack`, install the tarball into a
fresh project, compile a strict TypeScript program against it, and run it in Node."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.support import service_missing
from tests.test_js_clients import CLIENT_PACKAGE, CLIENTS, NODE_TIMEOUT_S, require_node

# A program an app would write: every import resolves to a real type, under strict.
PROGRAM = """\
import { ChatClient, ChatError, userIdOf } from "@chat-server/client";
import type { ConversationDto, GroupDto, MessageDto, Receipts, SyncPage } from "@chat-server/client";

const chat = new ChatClient({ url: "http://127.0.0.1:9", token: () => "t", userName: "Alice" });
const sub = chat.messages$.subscribe((m: MessageDto) => {
  const where: string = m.groupId ?? m.receiverId ?? "";
  console.log(where, m.status satisfies "sent" | "delivered" | "read");
});
chat.groupChanges$.subscribe((g: GroupDto) => g.members.map((x) => x.role satisfies "admin" | "member"));
async function use(): Promise<void> {
  const list: ConversationDto[] = await chat.conversations();
  const group: GroupDto = await chat.createGroup("Care team", ["bob"]);
  const id: string = await chat.sendGroupMessage(group.id, "hi");
  const r: Receipts = await chat.receipts(id);
  const page: SyncPage = await chat.call("Sync", null, 10);
  console.log(list.length, r.readBy?.length, page.groups.length, list[0]?.kind satisfies "direct" | "group" | undefined);
}
void use;
const e = new ChatError("forbidden", "no");
console.log(e.code, userIdOf("x"), typeof chat.connect);
sub.unsubscribe();
chat.disconnect();
console.log("program: ok");
"""

# What strict types must refuse: the cursor is string | null, a group id is no number.
WRONG = """\
import { ChatClient } from "@chat-server/client";
const chat = new ChatClient({ url: "http://127.0.0.1:9", token: () => "t" });
const n: number = chat.cursor;
void chat.sendGroupMessage(42, "hi");
"""


def tsc_config(module: str, resolution: str) -> dict[str, object]:
    return {"compilerOptions": {
        "strict": True, "target": "ES2022", "module": module, "moduleResolution": resolution,
        "lib": ["ES2022", "DOM"], "types": [], "outDir": "out", "skipLibCheck": False,
    }, "files": ["main.ts"]}


def npm(*args: str, cwd: Path) -> str:
    result = subprocess.run(
        ["npm", *args, "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=cwd, capture_output=True, text=True, timeout=NODE_TIMEOUT_S,
    )
    assert result.returncode == 0, f"npm {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh `npm pack` of client-demo/client (prepack builds it with tsc)."""
    require_node()
    if not (CLIENT_PACKAGE / "node_modules" / "typescript").is_dir():
        service_missing("client-demo/client/node_modules", "run `make setup` (npm ci there)")
    out = tmp_path_factory.mktemp("pack")
    npm("pack", "--pack-destination", str(out), cwd=CLIENT_PACKAGE)
    (tgz,) = out.glob("chat-server-client-*.tgz")
    return tgz


def test_the_tarball_holds_the_build_and_a_package_json_that_says_how_to_load_it(tarball: Path) -> None:
    with tarfile.open(tarball) as tar:
        names = sorted(tar.getnames())
        manifest = json.load(tar.extractfile("package/package.json"))  # type: ignore[arg-type]
    assert names == sorted(f"package/{n}" for n in [
        "README.md", "package.json", "dist/index.js", "dist/index.d.ts", "dist/client.js",
        "dist/client.d.ts", "dist/protocol.js", "dist/protocol.d.ts",
    ]), names
    assert manifest["type"] == "module" and manifest["sideEffects"] is False
    assert manifest["files"] == ["dist"] and manifest["types"] == "./dist/index.d.ts"
    assert list(manifest["exports"]["."]) == ["types", "default"], "types condition first"
    assert set(manifest["peerDependencies"]) == {"rxjs", "socket.io-client"}
    assert "dependencies" not in manifest


def test_a_fresh_project_installs_the_tarball_and_compiles_strict_against_it(
    tarball: Path, tmp_path: Path
) -> None:
    node = require_node()
    (tmp_path / "package.json").write_text(json.dumps({"name": "fresh", "private": True, "type": "module"}))
    # The peers at the versions the lock files pin, so the npm cache answers.
    npm("install", "--prefer-offline", str(tarball), "rxjs@7.8.2", "socket.io-client@4.8.4", cwd=tmp_path)
    installed = tmp_path / "node_modules" / "@chat-server" / "client"
    assert installed.is_dir() and not installed.is_symlink(), "a copy from the tarball, not a link"

    tsc = str(CLIENTS / "node_modules" / "typescript" / "bin" / "tsc")
    (tmp_path / "main.ts").write_text(PROGRAM)
    for module, resolution in (("NodeNext", "NodeNext"), ("ES2022", "Bundler")):
        (tmp_path / "tsconfig.json").write_text(json.dumps(tsc_config(module, resolution)))
        result = subprocess.run([node, tsc, "-p", "."], cwd=tmp_path, capture_output=True, text=True,
                                timeout=NODE_TIMEOUT_S)
        assert result.returncode == 0, f"strict tsc ({resolution}) failed:\n{result.stdout}"

    # It runs in Node as ESM: the peers resolve from the project, nothing connects until connect().
    ran = subprocess.run([node, "out/main.js"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=NODE_TIMEOUT_S, env={**os.environ, "NODE_NO_WARNINGS": "1"})
    assert ran.returncode == 0 and "program: ok" in ran.stdout, ran.stdout + ran.stderr

    (tmp_path / "main.ts").write_text(WRONG)
    refused = subprocess.run([node, tsc, "-p", "."], cwd=tmp_path, capture_output=True, text=True,
                             timeout=NODE_TIMEOUT_S)
    assert refused.returncode != 0
    assert "Type 'string | null' is not assignable to type 'number'" in refused.stdout, refused.stdout
    assert "'number' is not assignable to parameter of type 'string'" in refused.stdout, refused.stdout
