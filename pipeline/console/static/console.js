// The Legato console's only script: actions on a run (through the JSON API), refreshing the
// run page as its steps end, and live tokens from the run's event stream (Server-Sent Events).
// Data from the server is put in the page as text (textContent), never as markup.
(function () {
  "use strict";
  const body = document.body;
  const run = body.dataset.run;
  if (!run) return; // the runs list: plain HTML, nothing to do
  const api = "/api/runs/" + encodeURIComponent(run);

  async function post(url, data) {
    const answer = await fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify(data || {}),
    });
    let said = {};
    try { said = await answer.json(); } catch (e) { /* no JSON body */ }
    if (!answer.ok) throw new Error(said.error || answer.status + " " + answer.statusText);
    return said;
  }

  // The parts of the page the server renders again as the run moves on.
  const PARTS = ["run-head", "actions", "waits", "run-body"];
  let refreshing = null;
  async function refresh() {
    const answer = await fetch(location.pathname, {credentials: "same-origin"});
    if (!answer.ok) return;
    const fresh = new DOMParser().parseFromString(await answer.text(), "text/html");
    for (const id of PARTS) {
      const now = document.getElementById(id);
      const then = fresh.getElementById(id);
      if (now && then && now.innerHTML !== then.innerHTML) now.replaceWith(then);
    }
    body.dataset.status = fresh.body.dataset.status;
    body.dataset.done = fresh.body.dataset.done;
  }
  function refreshSoon() { // at most one refresh in flight, and one more after it
    if (refreshing) { refreshing.again = true; return; }
    refreshing = {again: false};
    setTimeout(async function () {
      try { await refresh(); } finally {
        const again = refreshing.again;
        refreshing = null;
        if (again) refreshSoon();
      }
    }, 150);
  }
  window.legatoConsole = {refresh: refresh, post: post};

  document.addEventListener("click", async function (event) {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const note = document.getElementById("action-result");
    button.disabled = true;
    try {
      await post(api + "/" + button.dataset.action);
      note.textContent = button.dataset.action === "cancel" ? "cancelled" : "resumed";
      await refresh();
      if (button.dataset.action === "resume") follow();
    } catch (error) {
      note.textContent = error.message;
    } finally {
      button.disabled = false;
    }
  });

  // Live tokens: one block per (step, attempt); an aborted attempt is struck through.
  function streamBlock(path, attempt) {
    const key = path + "#" + attempt;
    const streams = document.getElementById("streams");
    for (const block of streams.children) if (block.dataset.key === key) return block;
    const block = document.createElement("div");
    block.className = "stream";
    block.dataset.key = key;
    block.dataset.path = path;
    const head = document.createElement("h4");
    head.textContent = path + " · attempt " + attempt;
    block.append(head, document.createElement("pre"));
    streams.append(block);
    document.getElementById("tokens").hidden = false;
    return block;
  }
  window.legatoConsole.streamBlock = streamBlock;

  let source = null;
  function follow() {
    if (source || !window.EventSource) return;
    source = new EventSource(api + "/events");
    const handlers = window.legatoConsole.handlers || {};
    for (const [name, handle] of Object.entries(handlers)) {
      source.addEventListener(name, function (message) {
        handle(JSON.parse(message.data), refreshSoon);
      });
    }
    source.addEventListener("end", function () { source.close(); source = null; refreshSoon(); });
  }
  window.legatoConsole.follow = follow;
  window.legatoConsole.refreshSoon = refreshSoon;
})();
