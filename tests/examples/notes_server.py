"""A small MCP server (the `mcp` SDK's MCPServer, formerly FastMCP) that keeps notes, for the
example pipeline `notes_keeper.yaml` and the MCP tests. Run: `python notes_server.py` (stdio) or
`python notes_server.py http PORT` (streamable HTTP at /mcp).

Every call is appended to NOTES_LOG (JSON Lines: tool, arguments, the idempotency key from
`_meta`, a digest of the NOTES_TOKEN it was started with and, over HTTP, of the request's
X-Notes-Token header), so a test can count what reached it and see its credential arrived.
Without NOTES_TOKEN it refuses every call: the token is the credential the worker passes it.
NOTES_EXTRA=1 adds a tool (`shout`), to change the tool list between runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

LOG = Path(os.environ.get("NOTES_LOG", "notes.jsonl"))
TOKEN = os.environ.get("NOTES_TOKEN", "")
server = MCPServer("notes")


def _journal(tool: str, ctx: Context, **args: Any) -> None:
    if not TOKEN:
        raise ToolError("NOTES_TOKEN is not set: refused")
    meta = ctx.request_context.meta or {}
    request = ctx.request_context.request  # over HTTP: the request, with the client's headers
    header = request.headers.get("x-notes-token") if request is not None else None
    entry = {"tool": tool, "args": args, "key": meta.get("legato/idempotency_key"),
             "token": hashlib.sha256(TOKEN.encode()).hexdigest()[:16], "pid": os.getpid(),
             "header": hashlib.sha256(header.encode()).hexdigest()[:16] if header else None}
    with LOG.open("a") as f:
        f.write(json.dumps(entry) + "\n")


def _notes() -> list[str]:
    if not LOG.exists():
        return []
    rows = [json.loads(line) for line in LOG.read_text().splitlines() if line.strip()]
    return [r["args"]["text"] for r in rows if r["tool"] == "add_note"]


@server.tool()
def add_note(text: str, ctx: Context) -> str:
    """Add a note; returns how many notes there are now."""
    _journal("add_note", ctx, text=text)
    return f"{len(_notes())} notes"


@server.tool()
def list_notes(ctx: Context) -> list[str]:
    """Every note so far, oldest first."""
    _journal("list_notes", ctx)
    return _notes()


@server.tool()
def nap(seconds: float, ctx: Context) -> str:
    """Sleep `seconds`, only the first time it is called with them (a test's slow call)."""
    _journal("nap", ctx, seconds=seconds)
    marker = LOG.with_suffix(f".napped-{seconds}")
    if not marker.exists():
        marker.touch()
        time.sleep(seconds)
    return "rested"


if os.environ.get("NOTES_EXTRA") == "1":
    @server.tool()
    def shout(text: str, ctx: Context) -> str:
        """The text in capitals."""
        _journal("shout", ctx, text=text)
        return text.upper()


if __name__ == "__main__":
    if sys.argv[1:2] == ["http"]:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run("stdio")
