"""A fault-injecting, OpenAI-compatible fake model server (stdlib asyncio + PyYAML).

Endpoints: ``POST /v1/chat/completions`` (``"stream": true``: server-sent events, see
streaming.py), ``GET /v1/models``, ``GET /health``,
and admin ``GET /_fake/stats``, ``POST /_fake/reset``, ``PUT /_fake/script`` (JSON body, same
shape as a script file). Replies are deterministic: the same request gives the same bytes.

Script (YAML/JSON file or dict; every key optional)::

    seed: 0                 # seeds the jitter
    chunk_chars: 8          # a streamed answer's content comes this many characters an event
    latency_ms: 0           # added to every chat request ...
    jitter_ms: 0            # ... plus a seeded random 0..jitter_ms
    models: [my-model]      # extra names for GET /v1/models
    rules:                  # first match wins; no match -> a derived reply (see below)
      - match: {model: m, contains: "in last user msg", system_contains: s, any_contains: a}
        reply: "text" | {json: object} | [json, list]   # dict/list -> JSON in message.content
        tool_calls: [{name: search, arguments: {q: x}}]  # -> finish_reason "tool_calls"
    faults:                 # in order; latency adds up; the first other fault that fires decides
      - {kind: latency, ms: 200, jitter_ms: 50}
      - {kind: status, code: 429, retry_after: 1, times: 2}   # Retry-After header
      - {kind: status, code: 400, body: "maximum context length exceeded"}
      - {kind: malformed, every: 3}        # 200 whose content is broken JSON
      - {kind: hang, seconds: 5}           # sleep, then answer normally
      - {kind: drop, match: {model: m}}    # close the connection, no response
      - {kind: stream_drop, after: 3}      # streamed: close the connection after 3 events
      - {kind: stream_malformed, after: 2} # streamed: event 2 (0-based) is broken JSON
      - {kind: stream_slow, ms: 20}        # streamed: wait before each event (adds up)
    # stream_* faults match only streaming requests
    # every fault also takes match (as in rules), times (fire at most N times), every (Nth match)

Derived replies: a ``json_schema`` response_format gets a deterministic instance of the
schema, and so does ``json_object`` with a ``schema`` (llama.cpp's form); ``json_object`` alone
gets ``{"answer": ...}``; otherwise ``"[fake:MODEL] " + last user message``, cut to 200 chars.
"""

from legato.local.fake_model.replies import error_body
from legato.local.fake_model.runner import ThreadedServer, main, run, start_in_thread
from legato.local.fake_model.schema_gen import instance as schema_instance
from legato.local.fake_model.script import load_script, validate_script
from legato.local.fake_model.server import FakeModelServer

__all__ = [
    "FakeModelServer",
    "ThreadedServer",
    "error_body",
    "load_script",
    "main",
    "run",
    "schema_instance",
    "start_in_thread",
    "validate_script",
]
