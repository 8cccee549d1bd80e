"""A step's error never stores a credential, whoever echoed it: a provider (test_hostile.py) or
a tool, as here."""

from __future__ import annotations

from legato import Pipeline, Tool

LEAKED = "sk-live-0123456789abcdefXYZ"


def test_a_tool_error_that_echoes_a_key_is_stored_without_it(legato, fake, redis_server):
    run = legato.wait(legato.submit(Pipeline(name="leaky", steps=[
        Tool(id="careless", tool="leaky")]), {}), timeout=30)
    assert run.status == "failed"
    assert run.error.startswith("careless: tool 'leaky' raised RuntimeError: upstream said 401")
    assert LEAKED not in run.error
    client = redis_server.client()
    for key in client.scan_iter(match=f"*{run.id}*"):
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "hash":
            blob = " ".join(str(v) for v in client.hgetall(key).values())
            assert LEAKED not in blob, key
