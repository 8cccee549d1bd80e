"""The console's pages in real headless Chromium (over the DevTools protocol), signed in with the
console's credentials, against a real server, workers and the fake model: the runs list with a
filter, a running run's live tokens, an approval sent through the form that resumes the run, and
hostile run data that stays text. Screenshots are taken of each and checked for content."""

from __future__ import annotations

import asyncio
import base64
import shutil
from pathlib import Path

from tests.browser import Browser
from tests.png import colours, read_png

GREEN = bytes((0x2E, 0x9D, 0x4F))  # a succeeded status / bar
HOSTILE = '<img src=x onerror=alert(1)><script>alert(2)</script>"\'><b>bold</b>'
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
