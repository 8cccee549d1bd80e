// The Legato console's only script: actions on a run (through the JSON API), refreshing the
// run page as its steps end, and live tokens from the run's event stream (Server-Sent Events).
// Data from the server is put in the page as text (textContent), never as markup.
(function () {
  "use strict";
  const body = document.body;
  const run = body.dataset.run;

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

  // The runs list's submit form: the job as the API takes it; the API checks it (422 naming
  // the field, shown beside the button), and the new run's page opens.
  function job(form) {
    // watch: the run's page opens next and follows it, so its steps stream from the first.
    const data = {pipeline: form.elements.pipeline.value, watch: true,
                  input: JSON.parse(form.elements.input.value || "{}")};
    const tenant = form.elements.tenant.value.trim();
    if (tenant !== "") data.tenant = tenant;
    const priority = form.elements.priority.value.trim();
    if (priority !== "") data.priority = Number(priority);
    const tags = form.elements.tags.value.trim();
    if (tags !== "") {
      data.tags = {};
      for (const pair of tags.split(/\s+/)) {
        const at = pair.indexOf("=");
        if (at < 1) throw new Error("tags: " + JSON.stringify(pair) + " is not key=value");
        data.tags[pair.slice(0, at)] = pair.slice(at + 1);
      }
    }
    return data;
  }
  document.addEventListener("submit", async function (event) {
    const form = event.target.closest("form.submit");
    if (!form) return;
    event.preventDefault();
    const said = form.querySelector(".said");
    said.textContent = "";
    try {
      const made = await post("/api/runs", job(form));
      location.assign("/runs/" + encodeURIComponent(made.run_id));
    } catch (error) {
      said.textContent = error.message; // input that is not JSON, or the server's check
    }
  });

  if (!run) return; // the runs list: nothing more to do
  const api = "/api/runs/" + encodeURIComponent(run);

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
      if (!now || !then || now.innerHTML === then.innerHTML) continue;
      // Not under the hands of someone filling in a form (unless it was sent).
      if (now.contains(document.activeElement) && !now.querySelector("[data-sent]")) continue;
      now.replaceWith(then);
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

  // A waiting step's form: its fields as the signal's payload (typed as the schema says), or
  // an agent's approval decision. The server checks it against the step's schema.
  function payload(form, submitter) {
    if (form.dataset.kind === "approval") {
      const decision = submitter ? submitter.dataset.decision : "approve";
      const data = {decision: decision};
      const reason = form.querySelector("[name=reason]");
      if (decision === "reject" && reason && reason.value) data.reason = reason.value;
      if (decision === "edit") data.arguments = JSON.parse(form.querySelector("[name=arguments]").value);
      return data;
    }
    const data = {};
    for (const input of form.querySelectorAll("[data-field]")) {
      const name = input.dataset.field;
      let value;
      if (input.type === "checkbox") value = input.checked;
      else if (input.value === "") continue; // left empty: not sent
      else if (input.dataset.json) value = JSON.parse(input.value);
      else if (input.type === "number") value = Number(input.value);
      else value = input.value;
      if (name === "") return value; // the whole payload
      data[name] = value;
    }
    return data;
  }

  document.addEventListener("submit", async function (event) {
    const form = event.target.closest("form.wait");
    if (!form) return;
    event.preventDefault();
    const said = form.querySelector(".said");
    const buttons = form.querySelectorAll("button");
    buttons.forEach(function (b) { b.disabled = true; });
    try {
      const data = payload(form, event.submitter);
      const answer = await post(api + "/signal", {step: form.dataset.step, data: data});
      said.textContent = "sent: " + answer.state;
      form.dataset.sent = answer.state;
      setTimeout(refreshSoon, 300);
    } catch (error) {
      said.textContent = error.message; // a JSON field that does not parse, or the server's check
      buttons.forEach(function (b) { b.disabled = false; });
    }
  });

  // Live tokens: one block per (step, attempt); an aborted attempt is struck through.
  function streamBlock(path, attempt, call) {
    const key = path + "#" + attempt + "." + call;
    const streams = document.getElementById("streams");
    for (const block of streams.children) if (block.dataset.key === key) return block;
    const block = document.createElement("div");
    block.className = "stream";
    block.dataset.key = key;
    block.dataset.path = path;
    const head = document.createElement("h4");
    head.textContent = path + " · attempt " + attempt + (call > 1 ? " · call " + call : "");
    block.append(head, document.createElement("pre"));
    streams.append(block);
    document.getElementById("tokens").hidden = false;
    return block;
  }
  window.legatoConsole.handlers = {
    attempt_started: function (e) {
      const block = streamBlock(e.path, e.attempt, e.call);
      block.classList.remove("aborted", "committed");
      block.querySelector("pre").textContent = ""; // a redelivery starts the call over
    },
    delta: function (e) {
      streamBlock(e.path, e.attempt, e.call).querySelector("pre").append(e.text);
    },
    attempt_aborted: function (e) {
      const block = streamBlock(e.path, e.attempt, e.call);
      block.classList.add("aborted");
      block.querySelector("h4").append(" · discarded (" + (e.reason || "retried") + ")");
    },
    attempt_committed: function (e) { streamBlock(e.path, e.attempt, e.call).classList.add("committed"); },
    step_finished: function (e, soon) { soon(); },
    run_finished: function (e, soon) { soon(); },
  };

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
  if (body.dataset.done !== "1") follow();
})();
