// tracecanary dashboard: "run again", live waterfall (SSE), overview refresh. No build step.
"use strict";

function authHeaders() {
  const t = localStorage.getItem("tracecanary_token");
  return t ? { "Authorization": "Bearer " + t } : {};
}

async function fireProbe(probeId, button) {
  button.disabled = true;
  const post = () => fetch("/api/probes/" + encodeURIComponent(probeId) + "/run", {
    method: "POST", headers: { "Content-Type": "application/json", ...authHeaders() }, body: "{}",
  });
  try {
    let r = await post();
    if (r.status === 401) {
      const t = window.prompt("API token (daemon.api_token)");
      if (!t) return;
      localStorage.setItem("tracecanary_token", t);
      r = await post();
    }
    if (r.status !== 202) { alert("run failed: HTTP " + r.status); return; }
    const body = await r.json();
    // the daemon records the run a moment after accepting it: wait (bounded) until it exists
    for (let i = 0; i < 50; i++) {
      const probe = await fetch("/api/runs/" + encodeURIComponent(body.run_id), { headers: authHeaders() });
      if (probe.ok) break;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    window.location.href = "/runs/" + encodeURIComponent(body.run_id);
  } finally {
    button.disabled = false;
  }
}

function followLive(container) {
  const src = new EventSource(container.dataset.live);
  src.addEventListener("waterfall", (ev) => { container.innerHTML = ev.data; });
  src.addEventListener("done", () => { src.close(); window.location.reload(); });
  src.onerror = () => { src.close(); setTimeout(() => window.location.reload(), 2000); };
}

function refreshOverview(table) {
  const every = Number(table.dataset.refresh || 5) * 1000;
  setInterval(async () => {
    const r = await fetch(window.location.href, { headers: { "Accept": "text/html" } });
    if (!r.ok) return;
    const doc = new DOMParser().parseFromString(await r.text(), "text/html");
    const fresh = doc.querySelector("#probes tbody");
    if (fresh) table.querySelector("tbody").replaceWith(fresh);
  }, every);
}

document.addEventListener("click", (ev) => {
  const b = ev.target.closest("button.run-again");
  if (b) { ev.preventDefault(); fireProbe(b.dataset.probe, b); }
});

// Forms that write carry the API token (a password field, works without JS); remember it for this browser.
function rememberToken() {
  const known = localStorage.getItem("tracecanary_token");
  document.querySelectorAll("input.token").forEach((input) => {
    if (known && !input.value) input.value = known;
    input.form.addEventListener("submit", () => {
      if (input.value) localStorage.setItem("tracecanary_token", input.value);
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  rememberToken();
  const live = document.querySelector("#wf-container[data-live]");
  if (live) followLive(live);
  const table = document.querySelector("#probes[data-refresh]");
  if (table) refreshOverview(table);
});
