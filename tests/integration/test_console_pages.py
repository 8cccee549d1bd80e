"""The console's pages in real headless Chromium (over the DevTools protocol), signed in with the
console's credentials, against a real server, workers and the fake model: the runs list with a
filter, a running run's live tokens, an approval sent through the form that resumes the run, an
agent's tool call approved, rejected or edited through its form, and hostile run data that stays
text. Screenshots are taken of each and checked for content."""

from __future__ import annotations

import asyncio
import base64
import shutil
from pathlib import Path

from legato import Pipeline
from legato.spec import Agent
from tests.browser import Browser
from tests.png import colours, read_png

GREEN = bytes((0x2E, 0x9D, 0x4F))  # a succeeded status / bar
HOSTILE = '<img src=x onerror=alert(1)><script>alert(2)</script>"\'><b>bold</b>'
REFUND = {"name": "refund", "arguments": {"order": 7, "amount": 120}}
SHOTS = Path(__file__).resolve().parents[2] / "build" / "console-screenshots"


def _auth(console) -> dict[str, str]:
    basic = base64.b64encode(f"reviewer:{console.token}".encode()).decode()
    return {"Authorization": f"Basic {basic}"}


def _keep(shot: Path) -> Path:
    """Keep a copy where a person can look (build/ is not committed)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, SHOTS / shot.name)
    return shot


def _check_shot(shot: Path, *, green: bool) -> None:
    width, height, _ = read_png(shot)
    assert (width, height) == (1280, 900)
    seen = colours(shot)
    assert seen.most_common(1)[0][1] < 0.97 * sum(seen.values()), "the page is one colour"
    if green:
        assert seen[GREEN] > 10, "no succeeded status on the page"


def _submit(console, pipeline: str, value: dict, **extra: object) -> str:
    made = console.post("/api/runs", {"pipeline": pipeline, "input": value, **extra})
    assert made.status_code == 201, made.text
    return str(made.json()["run_id"])


def test_the_runs_list_filters_and_links(console, tmp_path):
    first = _submit(console, "summarize", {"text": "listed one"}, tags={"page": "list"})
    second = _submit(console, "summarize", {"text": "listed two"}, tags={"page": "other"})
    console.wait(first), console.wait(second)

    async def look() -> dict:
        async with Browser(tmp_path) as browser:
            await browser.headers(_auth(console))
            await browser.open(f"{console.url}/")
            await browser.until("document.querySelectorAll('table.runs tr.run').length >= 2")
            everything = await browser.js("[...document.querySelectorAll('tr.run')]"
                                          ".map(r => r.dataset.run)")
            # Filter through the form, as a person would.
            await browser.js("document.querySelector('input[name=tag]').value = 'page=list';"
                             "document.querySelector('form.filters').submit()")
            await browser.until("location.search.includes('tag=page')")
            await browser.until("document.readyState === 'complete'")
            filtered = await browser.js("[...document.querySelectorAll('tr.run')]"
                                        ".map(r => r.dataset.run)")
            shot = await browser.screenshot(tmp_path / "console-runs.png")
            await browser.js("document.querySelector('tr.run a').click()")
            await browser.until("document.body.dataset.run !== undefined")
            opened = await browser.js("document.body.dataset.run")
            return {"all": everything, "filtered": filtered, "shot": shot, "opened": opened,
                    "dialogs": browser.dialogs}

    seen = asyncio.run(look())
    assert seen["all"][:2] == [second, first]  # newest first
    assert seen["filtered"] == [first] and seen["opened"] == first
    _check_shot(_keep(seen["shot"]), green=True)


def test_a_run_submitted_through_the_form_with_tenant_and_priority(console, legato, tmp_path):
    async def submit() -> dict:
        async with Browser(tmp_path) as browser:
            await browser.headers(_auth(console))
            await browser.open(f"{console.url}/")
            fill = """((tenant, priority) => {
                const form = document.querySelector('form.submit');
                form.elements.pipeline.value = 'summarize';
                form.elements.input.value = '{"text": "from the form"}';
                form.elements.tenant.value = tenant;
                form.elements.priority.value = priority;
                form.elements.tags.value = 'origin=form';
                form.querySelector('button[type=submit]').click();
            })"""
            await browser.js(f"{fill}('bad tenant', '5')")
            await browser.until("document.querySelector('form.submit .said').textContent")
            refused = await browser.js("document.querySelector('form.submit .said').textContent")
            await browser.js(f"{fill}('acme', '1001')")
            await browser.until("document.querySelector('form.submit .said').textContent"
                                ".startsWith('priority')")
            too_high = await browser.js("document.querySelector('form.submit .said')"
                                        ".textContent")
            await browser.js(f"{fill}('acme', '5')")
            await browser.until("document.body.dataset.run !== undefined", timeout=30)
            run_id = await browser.js("document.body.dataset.run")
            await browser.until("document.body.dataset.status === 'succeeded'", timeout=90)
            await browser.open(f"{console.url}/?tenant=acme&priority=5&tag=origin%3Dform")
            await browser.until("document.readyState === 'complete'")
            listed = await browser.js("[...document.querySelectorAll('tr.run')].map(r => "
                                      "[r.dataset.run, r.querySelector('.tenant').textContent, "
                                      "r.querySelector('.priority').textContent])")
            return {"refused": refused, "too_high": too_high, "run_id": run_id,
                    "listed": listed}

    before = legato.store.redis.zcard(legato.store.keys.runs)
    seen = asyncio.run(submit())
    assert seen["refused"].startswith("tenant 'bad tenant' refused"), seen["refused"]
    assert seen["too_high"].startswith("priority 1001 refused"), seen["too_high"]
    assert legato.store.redis.zcard(legato.store.keys.runs) == before + 1  # refusals: none
    record = legato.status(seen["run_id"])
    assert (record.tenant, record.priority, record.tags) == ("acme", 5, {"origin": "form"})
    assert record.input == {"text": "from the form"}
    assert seen["listed"][0] == [seen["run_id"], "acme", "5"]


def test_a_running_run_shows_its_tokens_live(console, legato, fake, tmp_path):
    # Slow enough to be seen streaming, within the stack's 5 s HTTP timeout per call.
    fake.script({"chunk_chars": 6, "faults": [{"kind": "latency", "ms": 2500, "times": 1},
                                              {"kind": "stream_slow", "ms": 40}]})

    async def watch() -> dict:
        async with Browser(tmp_path) as browser:  # started first: it is slow on a busy machine
            await browser.headers(_auth(console))
            run_id = _submit(console, "summarize", {"text": "Stream me slowly, token by token."})
            await browser.open(f"{console.url}/runs/{run_id}")
            await browser.until("(document.querySelector('#streams pre') || {}).textContent"
                                "?.length > 12", timeout=60)
            status = await browser.js("document.body.dataset.done")
            shot = await browser.screenshot(tmp_path / "console-streaming.png")
            await browser.until("document.body.dataset.status === 'succeeded'", timeout=90)
            texts = await browser.js("Object.fromEntries([...document.querySelectorAll("
                                     "'#streams .stream:not(.aborted)')].map(b => [b.dataset.path, "
                                     "b.querySelector('pre').textContent]))")
            steps = await browser.js("document.querySelectorAll('section.step').length")
            return {"done_then": status, "shot": shot, "texts": texts, "steps": steps,
                    "run_id": run_id}

    seen = asyncio.run(watch())
    assert seen["done_then"] == "0"  # the screenshot is of the run while it ran
    outputs = {s.path: s.output for s in legato.steps(seen["run_id"])}
    assert seen["texts"] == {"summary": outputs["summary"], "headline": outputs["headline"]}
    assert seen["steps"] == 3  # the page refreshed its steps as they ended
    _check_shot(_keep(seen["shot"]), green=False)


def test_an_approval_through_the_form_resumes_the_run(console, legato, tmp_path):
    run_id = _submit(console, "approval_flow", {"customer": "Ana", "message": "Where is it?"})

    async def approve() -> dict:
        async with Browser(tmp_path) as browser:
            await browser.headers(_auth(console))
            await browser.open(f"{console.url}/runs/{run_id}")
            await browser.until("document.querySelector('form.wait[data-step=approve]')",
                                timeout=60)
            fields = await browser.js("[...document.querySelectorAll('form.wait [data-field]')]"
                                      ".map(f => f.dataset.field + ':' + f.dataset.type)")
            await browser.js("""(() => {
                const form = document.querySelector('form.wait[data-step=approve]');
                form.querySelector('[data-field=approved]').checked = true;
                form.querySelector('[data-field=reviewer]').value = 'ana';
                form.querySelector('[data-field=reply]').value = 'It ships today.';
            })()""")
            waiting = await browser.screenshot(tmp_path / "console-approval.png")
            await browser.js("document.querySelector('form.wait button[type=submit]').click()")
            await browser.until("document.body.dataset.status === 'succeeded'", timeout=90)
            done = await browser.screenshot(tmp_path / "console-approved.png")
            forms = await browser.js("document.querySelectorAll('form.wait').length")
            return {"fields": fields, "waiting": waiting, "done": done, "forms": forms}

    seen = asyncio.run(approve())
    assert sorted(seen["fields"]) == ["approved:boolean", "reply:string", "reviewer:string"]
    assert seen["forms"] == 0
    steps = {s.path: s for s in legato.steps(run_id)}
    assert steps["approve"].output == {"approved": True, "reviewer": "ana",
                                       "reply": "It ships today."}
    assert "It ships today." in steps["send"].output  # the corrected reply was sent
    assert legato.status(run_id).status == "succeeded"
    _check_shot(_keep(seen["waiting"]), green=False)
    _check_shot(_keep(seen["done"]), green=True)
    again = console.post(f"/api/runs/{run_id}/signal", {"step": "approve",
                                                        "data": {"approved": False}})
    assert again.status_code == 422 and "the run is succeeded" in again.json()["error"]


def test_hostile_run_data_stays_text_in_the_browser(console, tmp_path):
    run_id = _submit(console, "summarize", {"text": HOSTILE}, tags={"page": "hostile"})
    console.wait(run_id)

    async def look() -> dict:
        async with Browser(tmp_path) as browser:
            await browser.headers(_auth(console))
            found = {}
            for url in (f"{console.url}/runs/{run_id}", f"{console.url}/?q=onerror",
                        f"{console.url}/?q={HOSTILE}"):
                await browser.open(url)
                await asyncio.sleep(0.5)  # time for anything injected to run
                found[url] = await browser.js(
                    "({imgs: document.querySelectorAll('img').length, "
                    "scripts: [...document.scripts].map(s => s.getAttribute('src')), "
                    "text: document.body.innerText.includes('<img src=x onerror=alert(1)>')})")
            return {"found": found, "dialogs": browser.dialogs}

    seen = asyncio.run(look())
    assert seen["dialogs"] == []
    for url, found in seen["found"].items():
        assert found["imgs"] == 0 and found["scripts"] == ["/static/console.js"], url
    page = seen["found"][f"{console.url}/runs/{run_id}"]
    assert page["text"]  # shown, as text


def _agent_run(legato, fake, tag: str, rules: list[dict]) -> str:
    """An agent whose one tool (`refund`, tests/tools.py) needs approval: the fake model
    proposes REFUND, then answers by the rules once the tool's result (or refusal) is back."""
    fake.script({"rules": [*rules, {"match": {"contains": f"request {tag}"},
                                    "tool_calls": [REFUND]}]})
    spec = Pipeline(name=f"console_approvals_{tag}", steps=[Agent(
        id="helper", model="small", max_turns=4, tools=["refund"],
        prompt=f"Handle the refund request {tag}: {{{{ input.text }}}}")])
    return str(legato.submit(spec, {"text": "order 7"}))


def test_an_agent_tool_approval_through_the_form(console, legato, fake, tmp_path):
    """Approve, reject with a reason, edit the arguments: each through the page's approval form
    of a parked agent, which shows the proposed call's arguments; each resumes the run."""
    decide = {
        "approve": "",
        "reject": "form.querySelector('[name=reason]').value = 'over the limit';",
        "edit": "form.querySelector('[name=arguments]').value = "
                "JSON.stringify({order: 7, amount: 50});",
    }
    rules = {
        "approve": [{"match": {"any_contains": "refunded 120 on order 7"},
                     "reply": "Refund issued."}],
        "reject": [{"match": {"any_contains": "rejected by a person: over the limit"},
                    "reply": "I cannot refund that."}],
        "edit": [{"match": {"any_contains": "refunded 50 on order 7"}, "reply": "Refunded 50."}],
    }

    async def answer(run_id: str, decision: str) -> dict:
        async with Browser(tmp_path) as browser:
            await browser.headers(_auth(console))
            await browser.open(f"{console.url}/runs/{run_id}")
            await browser.until("document.querySelector('form.wait[data-kind=approval]')",
                                timeout=60)
            shown = await browser.js("document.querySelector('form.wait pre').textContent")
            offered = await browser.js("[...document.querySelectorAll('form.wait button')]"
                                       ".map(b => b.dataset.decision)")
            waiting = None
            if decision == "approve":
                waiting = await browser.screenshot(tmp_path / "console-agent-approval.png")
            await browser.js("(() => { const form = document.querySelector('form.wait');"
                             f"{decide[decision]}"
                             f"form.querySelector('button[data-decision={decision}]').click();"
                             "})()")
            await browser.until("document.body.dataset.status === 'succeeded'", timeout=90)
            done = await browser.screenshot(tmp_path / f"console-agent-{decision}-done.png")
            forms = await browser.js("document.querySelectorAll('form.wait').length")
            return {"shown": shown, "offered": offered, "waiting": waiting, "done": done,
                    "forms": forms, "dialogs": browser.dialogs}

    for decision, said in (("approve", "Refund issued."), ("reject", "I cannot refund that."),
                           ("edit", "Refunded 50.")):
        run_id = _agent_run(legato, fake, decision, rules[decision])
        seen = asyncio.run(answer(run_id, decision))
        assert '"name": "refund"' in seen["shown"], seen["shown"]
        assert '"order": 7' in seen["shown"] and '"amount": 120' in seen["shown"]
        assert seen["offered"] == ["approve", "reject", "edit"]
        assert seen["forms"] == 0 and seen["dialogs"] == []
        done = legato.wait(run_id, timeout=30)
        assert done.status == "succeeded" and done.output == said, (decision, done.error)
        approval = legato.store.get_step(run_id, "helper/approval[0]").detail["approval"]
        assert approval["decision"] == decision
        if decision == "reject":
            assert approval["reason"] == "over the limit"
        if decision == "edit":
            assert approval["arguments"] == {"order": 7, "amount": 50}
        if seen["waiting"] is not None:
            _check_shot(_keep(seen["waiting"]), green=False)
        _check_shot(_keep(seen["done"]), green=True)
