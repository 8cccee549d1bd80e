"""`legato serve`'s HTTP API, against a real server process, Redis, workers and the fake model:
auth, submit (the client's validation: 422 naming the field, nothing enqueued), status,
result, steps, cancel, resume, search by pipeline/status/tag/time/text/schedule/tenant, tags
through the CLI, the OpenAPI schema, and hostile requests that must not leak a traceback or a
server path."""

from __future__ import annotations

import base64
import json
import time

import httpx

from tests.integration.test_cli import legato_cli

LEAKS = ("Traceback", "File \"", ".py", "/work", "/tmp", "site-packages", "Exception")


def _count_runs(legato) -> int:
    return legato.store.redis.zcard(legato.store.keys.runs)


def test_every_request_needs_the_credentials(console):
    bare = httpx.Client(base_url=console.url, timeout=10)
    for path in ("/", "/api/runs", "/api/openapi.json", "/static/console.js", "/runs/x"):
        refused = bare.get(path)
        assert refused.status_code == 401, path
        assert refused.headers["www-authenticate"].startswith("Basic realm=")
        assert refused.json() == {"error": "authentication required"}
    assert bare.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    basic = base64.b64encode(f"me:{console.token}".encode()).decode()
    assert bare.get("/api/runs", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    assert bare.get("/healthz").json() == {"ok": True}  # for healthchecks: says nothing else
    assert bare.post("/api/runs", json={"pipeline": "summarize"}).status_code == 401
    # The security headers are on every answer, refusals included.
    assert "script-src 'self'" in bare.get("/").headers["content-security-policy"]
    assert console.get("/").headers["x-frame-options"] == "DENY"
    assert "access-control-allow-origin" not in console.get(
        "/api/runs", headers={"Origin": "https://evil.example"}).headers  # CORS is off


def test_submit_validates_like_the_client_and_enqueues_nothing_it_refuses(console, legato):
    before = _count_runs(legato)
    cases = {
        "input for pipeline 'summarize' refused: text: Field required": {
            "pipeline": "summarize", "input": {"words": 3}},
        "unknown pipeline": {"pipeline": "../../etc/passwd", "input": {}},
        "body.pipeline: Field required": {"input": {"text": "x"}},
        "body.tags.team: Input should be a valid string": {
            "pipeline": "summarize", "input": {"text": "x"}, "tags": {"team": 3}},
        "tags.team: value '<b>'": {"pipeline": "summarize", "input": {"text": "x"},
                                   "tags": {"team": "<b>"}},
        "body.extra: Extra inputs are not permitted": {"pipeline": "summarize", "extra": 1},
        "input: nested too deeply": {"pipeline": "summarize", "input": {"text": "x", "deep": (
            json.loads("[" * 150 + "]" * 150))}},
    }
    for message, body in cases.items():
        refused = console.post("/api/runs", body)
        assert refused.status_code == 422, (message, refused.text)
        assert refused.json()["error"].startswith(message) or message in refused.json()[
            "error"], (message, refused.text)
        assert not any(leak in refused.text for leak in LEAKS), refused.text
    assert _count_runs(legato) == before  # nothing was written or enqueued

    made = console.post("/api/runs", {"pipeline": "summarize", "input": {"text": "api text"},
                                      "tags": {"team": "billing", "ticket": "T-1"}})
    assert made.status_code == 201, made.text
    run_id = made.json()["run_id"]
    done = console.wait(run_id)
    assert done["done"] and done["status"] == "succeeded" and done["output"]
    record = console.get(f"/api/runs/{run_id}").json()
    assert record["tags"] == {"team": "billing", "ticket": "T-1"}
    assert record["input"] == {"text": "api text"} and record["usage"]["calls"] == 2
    steps = console.get(f"/api/runs/{run_id}/steps").json()
    assert [s["path"] for s in steps] == ["summary", "length", "headline"]
    assert steps[0]["detail"]["model_calls"][0]["outcome"] == "ok"
    assert legato.status(run_id).tags == {"team": "billing", "ticket": "T-1"}


def test_cancel_and_resume(console, legato, fake):
    fake.script({"faults": [{"kind": "latency", "ms": 1500, "times": 1}]})
    run_id = console.post("/api/runs", {"pipeline": "summarize",
                                        "input": {"text": "slow one"}}).json()["run_id"]
    assert console.post(f"/api/runs/{run_id}/resume").status_code == 409  # it is not failed
    said = console.post(f"/api/runs/{run_id}/cancel", {"reason": "operator said so"})
    assert said.status_code == 200 and said.json() == {"cancelled": True,
                                                       "status": "cancelled"}
    assert console.post(f"/api/runs/{run_id}/cancel").json()["cancelled"] is False
    assert console.get(f"/api/runs/{run_id}").json()["error"] == "operator said so"
    resumed = console.post(f"/api/runs/{run_id}/resume")
    assert resumed.status_code == 202, resumed.text
    assert console.wait(run_id)["status"] == "succeeded"
    # A run not finished in time: `done` false, status as it is.
    fake.script({"faults": [{"kind": "latency", "ms": 2500, "times": 1}]})
    slow = console.post("/api/runs", {"pipeline": "summarize",
                                      "input": {"text": "slower"}}).json()["run_id"]
    early = console.get(f"/api/runs/{slow}/result", params={"wait": 0.2}).json()
    assert early["done"] is False and early["status"] in ("queued", "running")
    assert console.wait(slow)["status"] == "succeeded"


def test_search_by_pipeline_status_tag_time_and_text(console, legato):
    start = time.time()
    marker = f"needle-{int(start * 1000)}"
    ids = {}
    for name, tags in (("a", {"suite": marker, "side": "left"}),
                       ("b", {"suite": marker, "side": "right"})):
        ids[name] = console.post("/api/runs", {"pipeline": "summarize", "tags": tags,
                                               "input": {"text": f"{name} {marker} TEXT"}}
                                 ).json()["run_id"]
    for run_id in ids.values():
        console.wait(run_id)

    def found(**params: object) -> list[str]:
        answer = console.get("/api/runs", params=params)
        assert answer.status_code == 200, answer.text
        return [r["id"] for r in answer.json()["runs"]]

    assert found(tag=f"suite={marker}") == [ids["b"], ids["a"]]  # newest first
    assert found(tag=[f"suite={marker}", "side=left"]) == [ids["a"]]
    assert found(q=f"A {marker.upper()}") == [ids["a"]]  # any case, in the input
    assert set(found(q=marker, status="succeeded", pipeline="summarize")) == set(ids.values())
    assert found(q=marker, status="failed") == []
    assert found(q=marker, pipeline="stakeholders") == []
    assert found(q=marker, since=repr(start - 1)) and found(q=marker, until=repr(start)) == []
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start - 1))
    assert set(found(q=marker, since=iso)) == set(ids.values())
    paged = console.get("/api/runs", params={"tag": f"suite={marker}", "limit": 1}).json()
    assert [r["id"] for r in paged["runs"]] == [ids["b"]] and paged["next_until"]
    rest = found(tag=f"suite={marker}", until=repr(paged["next_until"]))
    assert rest == [ids["a"]]
    for bad, message in ((dict(status="done"), "no run state 'done'"),
                         (dict(tag="nokey"), "tag 'nokey': expected key=value"),
                         (dict(since="yesterday"), "since: 'yesterday' is neither"),
                         (dict(limit=10_000), "query.limit: Input should be less than")):
        refused = console.get("/api/runs", params=bad)
        assert refused.status_code == 422 and message in refused.json()["error"], refused.text


def test_search_by_schedule_and_tenant_in_the_query_itself(stack_env, console, legato):
    marker = f"st-{int(time.time() * 1000)}"
    tags = {"suite": marker}
    nightly = legato.submit("summarize", {"text": "one"}, tags=tags, tenant="qa",
                            schedule="nightly")
    plain = legato.submit("summarize", {"text": "two"}, tags=tags, tenant="qa")
    newest = legato.submit("summarize", {"text": "three"}, tags=tags)  # tenant default
    # The filters are the search's own: a limit counts matching runs (filtered after the
    # search, the newest run, another tenant's, would have used up a limit of 1).
    assert [r.id for r in legato.runs(tags=tags, tenant="qa", limit=1)] == [plain]
    assert [r.id for r in legato.runs(tags=tags, schedule="nightly", limit=1)] == [nightly]
    assert [r.id for r in legato.runs(tags=tags, tenant="default")] == [newest]

    def found(**params: object) -> list[str]:
        answer = console.get("/api/runs", params={"tag": f"suite={marker}", **params})
        assert answer.status_code == 200, answer.text
        return [r["id"] for r in answer.json()["runs"]]

    assert found(tenant="qa") == [plain, nightly]
    assert found(tenant="qa", limit=1) == [plain]
    assert found(schedule="nightly") == [nightly] and found(schedule="weekly") == []
    listed = legato_cli("runs", "--tag", f"suite={marker}", "--tenant", "qa", "--limit", "1",
                        "--json", env=stack_env)
    assert [r["id"] for r in json.loads(listed.stdout)] == [plain], listed.stderr
    for run_id in (nightly, plain, newest):
        assert console.wait(run_id)["status"] == "succeeded"


def test_tenant_and_priority_on_submit_are_checked_shown_and_searched(console, legato):
    before = _count_runs(legato)
    job = {"pipeline": "summarize", "input": {"text": "x"}}
    cases = [
        ("tenant 'no spaces' refused: letters, digits", {**job, "tenant": "no spaces"}),
        ("tenant 'aaaa", {**job, "tenant": "a" * 65}),
        ("body.tenant: Input should be a valid string", {**job, "tenant": 7}),
        ("priority 1001 refused: an integer from -1000 to 1000", {**job, "priority": 1001}),
        ("body.priority: Input should be a valid integer", {**job, "priority": "high"}),
        ("body.priority: Input should be a valid integer", {**job, "priority": True}),
        ("body.priority: Input should be a valid integer", {**job, "priority": 2.5}),
    ]
    for message, body in cases:
        refused = console.post("/api/runs", body)
        assert refused.status_code == 422, (message, refused.text)
        assert refused.json()["error"].startswith(message), (message, refused.text)
    assert _count_runs(legato) == before  # nothing was written or enqueued

    marker = f"tenant-{time.time_ns()}"
    ids = {}
    for name, extra in (("acme", {"tenant": "acme", "priority": 7}),
                        ("acme_low", {"tenant": "acme", "priority": -3}),
                        ("plain", {})):
        made = console.post("/api/runs", {"pipeline": "summarize", "tags": {"suite": marker},
                                          "input": {"text": f"{name} text"}, **extra})
        assert made.status_code == 201, made.text
        ids[name] = made.json()["run_id"]
    for run_id in ids.values():
        assert console.wait(run_id)["status"] == "succeeded"
    record = console.get(f"/api/runs/{ids['acme']}").json()
    assert (record["tenant"], record["priority"]) == ("acme", 7)
    assert (legato.status(ids["plain"]).tenant, legato.status(ids["plain"]).priority) == (
        "default", 0)

    def found(**params: object) -> list[str]:
        answer = console.get("/api/runs", params={"tag": f"suite={marker}", **params})
        assert answer.status_code == 200, answer.text
        return [r["id"] for r in answer.json()["runs"]]

    assert found(tenant="acme") == [ids["acme_low"], ids["acme"]]
    assert found(tenant="acme", priority=7) == [ids["acme"]]
    assert found(tenant="default") == [ids["plain"]]
    assert found(priority=-3) == [ids["acme_low"]] and found(tenant="nobody") == []
    for bad, message in ((dict(priority="high"), "query.priority: Input should be a valid"),
                         (dict(priority=5000), "query.priority: Input should be less than"),
                         (dict(tenant="a" * 65), "query.tenant: String should have at most")):
        refused = console.get("/api/runs", params=bad)
        assert refused.status_code == 422 and message in refused.json()["error"], refused.text
    # The page's filter form and its columns.
    listed = console.get("/", params={"tenant": "acme", "priority": "7", "q": "acme text"})
    assert listed.status_code == 200
    assert f'data-run="{ids["acme"]}"' in listed.text
    assert f'data-run="{ids["acme_low"]}"' not in listed.text
    assert '<td class="tenant">acme</td><td class="priority">7</td>' in listed.text
    assert 'name="tenant" value="acme"' in listed.text  # the filter shows what it filters by
    bad_page = console.get("/", params={"priority": "high"})
    assert bad_page.status_code == 422
    assert "priority: &#x27;high&#x27; is not an integer" in bad_page.text


def test_tags_from_the_command_line(stack_env, console, legato):
    made = legato_cli("submit", "summarize", "--input", '{"text": "from the cli"}',
                      "--tag", "origin=cli", "--tag", "team=ops", "--wait", "--json",
                      env=stack_env)
    assert made.returncode == 0, made.stderr
    run_id = json.loads(made.stdout)["id"]
    assert legato.status(run_id).tags == {"origin": "cli", "team": "ops"}
    listed = legato_cli("runs", "--tag", "origin=cli", "--tag", "team=ops", "--json",
                        env=stack_env)
    assert [r["id"] for r in json.loads(listed.stdout)] == [run_id]
    table = legato_cli("runs", "--tag", "origin=cli", env={**stack_env, "COLUMNS": "200"})
    assert "origin=cli team=ops" in table.stdout
    status = legato_cli("status", run_id, env=stack_env)
    assert "tags origin=cli team=ops" in status.stdout
    bad = legato_cli("submit", "summarize", "--input", '{"text": "x"}', "--tag", "a b=c",
                     env=stack_env)
    assert bad.returncode == 2 and "tags: key 'a b'" in bad.stderr
    assert console.get("/api/runs", params={"tag": "origin=cli"}).json()["runs"][0]["id"] == (
        run_id)


def test_hostile_requests_get_one_line_and_no_server_detail(console):
    answers = [
        console.get("/api/runs/<script>alert(1)</script>"),
        console.get("/api/runs/" + "a" * 300),
        console.get("/api/runs/%2e%2e%2f%2e%2e%2fetc%2fpasswd/steps"),
        console.get("/api/runs/nosuchrun"),
        console.get("/runs/nosuchrun"),
        console.get("/no/such/page"),
        console.http.post("/api/runs", content=b"{not json",
                          headers={"Content-Type": "application/json"}),
        console.http.post("/api/runs", content=b"[" * 100_000 + b"]" * 100_000,
                          headers={"Content-Type": "application/json"}),
        console.http.post("/api/runs", content=b"x" * 3_000_000,
                          headers={"Content-Type": "application/json"}),
        console.http.post("/api/runs", content=b"\xff\xfe\x00",
                          headers={"Content-Type": "application/json"}),
        console.get("/api/runs", params={"q": "x" * 5000}),
        console.get("/api/runs", params={"since": "9" * 400}),
        console.get("/api/runs", params={"until": "nan"}),
        console.http.request("DELETE", "/api/runs"),
    ]
    for answer in answers:
        assert 400 <= answer.status_code < 500, (answer.request.url, answer.status_code,
                                                 answer.text[:300])
        assert not any(leak in answer.text for leak in LEAKS), answer.text[:500]
        assert len(answer.text) < 5000
        if answer.request.url.path.startswith("/api"):
            assert set(answer.json()) == {"error"}
    assert answers[3].status_code == 404 and answers[3].json() == {"error": "no run 'nosuchrun'"}
    assert answers[4].status_code == 404 and "no run" in answers[4].text  # a page, escaped
    assert answers[8].status_code == 413
    # A form another site's page could make a browser send: refused, whatever it carries.
    form = httpx.post(f"{console.url}/api/runs/x/cancel", content=b"reason=x",
                      headers={"Content-Type": "application/x-www-form-urlencoded",
                               "Authorization": "Basic " + base64.b64encode(
                                   f"u:{console.token}".encode()).decode()})
    assert form.status_code == 403 and "JSON body" in form.json()["error"]


def test_the_openapi_schema_is_served(console):
    schema = console.get("/api/openapi.json").json()
    paths = schema["paths"]
    for path in ("/api/runs", "/api/runs/{run_id}", "/api/runs/{run_id}/result",
                 "/api/runs/{run_id}/steps", "/api/runs/{run_id}/cancel",
                 "/api/runs/{run_id}/resume", "/api/pipelines"):
        assert path in paths, path
    assert "post" in paths["/api/runs"] and "get" in paths["/api/runs"]
    assert "/" not in paths  # the pages are not API
    script = console.get("/static/console.js")
    assert script.status_code == 200 and "EventSource" in script.text
    named = console.get("/api/pipelines").json()
    assert "summarize" in named and "models" not in named and named == sorted(named)


def test_serve_refuses_to_start_without_auth(stack_env):
    refused = legato_cli("serve", "--port", "1", env=stack_env)
    assert refused.returncode == 2
    assert "legato serve would start with no authentication" in refused.stderr
    half = legato_cli("serve", "--port", "1", env={**stack_env, "LEGATO_CONSOLE_USER": "ops"})
    assert half.returncode == 2 and "LEGATO_CONSOLE_PASSWORD is not set" in half.stderr
