// The morag dashboard: plain JavaScript over the client API, the key in sessionStorage only.
"use strict";
(function () {
  const $ = (sel) => document.querySelector(sel);
  const KEY = "morag.key";
  const TYPES = ["", "audio", "video", "youtube", "document", "web", "image", "echo"];
  const FINAL = new Set(["succeeded", "failed", "canceled", "dead"]);
  // What each error class means for the user (protocol/errors.py ErrorClass).
  const WHY = {
    bad_input: "The input cannot be processed (corrupt, unsupported or private). Retrying the same input fails again.",
    unsupported: "The worker has no processor for this type. Start a worker that takes it, then retry.",
    auth_required: "The source needs a sign-in: upload your cookies (morag cookies set FILE), then retry.",
    transient: "A passing network or upstream problem. It was retried; retry again later.",
    timeout: "It took too long on the worker. Retry, or split the input.",
    out_of_memory: "The worker ran out of memory. Retry on a larger worker.",
    internal: "A bug on the worker. Its log says more.",
    shutdown: "The worker stopped while running it.",
  };
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  let page = "overview";
  let admin = false;
  let user = "";
  let timer = null;
  let openTask = null;
  let lastTasks = [];
  const blobUrls = [];

  // --- helpers ---------------------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k === "style") node.style.cssText = v; // CSSOM: allowed by the page's CSP
      else node.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }
  const text = (v) => (v === null || v === undefined || v === "" ? "–" : String(v));
  function ago(iso) {
    if (!iso) return "–";
    const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
    if (s < 60) return `${Math.round(s)} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    return new Date(iso).toLocaleString();
  }
  function age(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 60) return `${Math.round(seconds)} s`;
    if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }
  function clock(s) {
    s = Math.floor(Number(s));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = String(s % 60).padStart(2, "0");
    return h ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
  }
  const badge = (state) => el("span", { class: `badge ${state}` }, state);
  function bar(progress) {
    const pct = Math.round(Math.max(0, Math.min(1, progress || 0)) * 100);
    return el("span", {}, el("span", { class: "bar" }, el("span", { style: `width:${pct}%` })), el("span", { class: "pct" }, `${pct}%`));
  }
  function fill(tbody, rows) {
    const body = typeof tbody === "string" ? $(tbody) : tbody;
    body.replaceChildren(...rows);
  }
  function say(sel, message, ok) {
    const node = $(sel);
    node.textContent = message;
    node.className = "msg " + (ok ? "ok" : "bad");
  }

  // --- API -------------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, code, message) { super(message); this.status = status; this.code = code; }
  }
  async function api(method, path, body, isForm) {
    const headers = { Authorization: `Bearer ${sessionStorage.getItem(KEY) || ""}` };
    const init = { method, headers };
    if (body !== undefined) {
      if (isForm) init.body = body;
      else { headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
    }
    const resp = await fetch(path, init);
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (!resp.ok) {
      const code = (data && data.code) || `http_${resp.status}`;
      const message = (data && data.message) || resp.statusText;
      if (resp.status === 401) { signOut(`Signed out: ${message}`); }
      throw new ApiError(resp.status, code, message);
    }
    return data;
  }
  const explain = (e) => (e instanceof ApiError ? `${e.message} (${e.code})` : `cannot reach the server: ${e.message}`);

  // --- sign in / out ---------------------------------------------------------------------------
  async function signIn(key) {
    sessionStorage.setItem(KEY, key);
    let me;
    try {
      me = await api("GET", "/api/v1/me");
    } catch (e) {
      sessionStorage.removeItem(KEY);
      $("#signin-error").textContent = e.status === 403 ? "This is a worker key: sign in with a client or admin key." : `Cannot sign in: ${explain(e)}`;
      return;
    }
    admin = me.scope === "admin";
    user = me.user || "anonymous";
    $("#signin-error").textContent = "";
    $("#key").value = "";
    start();
  }
  function signOut(reason) {
    sessionStorage.removeItem(KEY);
    admin = false;
    openTask = null;
    clearInterval(timer);
    timer = null;
    blobUrls.splice(0).forEach((u) => URL.revokeObjectURL(u));
    $("#nav").hidden = true;
    $("#who").hidden = true;
    for (const s of document.querySelectorAll(".page")) s.hidden = s.id !== "page-signin";
    for (const t of ["#lanes tbody", "#workers tbody", "#tasks tbody", "#documents tbody", "#all-lanes tbody", "#shared-workers tbody"]) fill(t, []);
    $("#hits").replaceChildren();
    $("#detail").hidden = true;
    $("#signin-error").textContent = reason || "";
  }
  function start() {
    $("#nav").hidden = false;
    $("#who").hidden = false;
    $("#who-text").textContent = `${user}${admin ? " (admin key)" : ""}`;
    $("#admin").hidden = !admin;
    show(location.hash.slice(1) || "overview");
    clearInterval(timer);
    timer = setInterval(refresh, 2000);
  }

  // --- pages -----------------------------------------------------------------------------------
  function show(name) {
    if (!document.getElementById(`page-${name}`) || name === "signin") name = "overview";
    page = name;
    history.replaceState(null, "", `#${name}`);
    for (const s of document.querySelectorAll(".page")) s.hidden = s.id !== `page-${name}`;
    for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t.dataset.page === name);
    refresh();
  }
  async function refresh() {
    if (!sessionStorage.getItem(KEY)) return;
    try {
      if (page === "overview") await overview();
      else if (page === "tasks") await tasks();
      else if (page === "documents") await documents();
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) $("#live").textContent = `not updated: ${explain(e)}`;
    }
  }

  function workerRows(workers) {
    return workers.map((w) => el("tr", {},
      el("td", {}, el("b", {}, w.name || w.worker_id), el("div", { class: "hint mono" }, w.worker_id)),
      el("td", {}, el("span", { class: `dot ${w.online ? "on" : ""}` }), badge(w.online ? "online" : "offline")),
      el("td", {}, text(w.lanes.join(", "))),
      el("td", {}, `${w.device || (w.lanes.includes("gpu") ? "GPU" : "CPU")}${w.version ? ` · worker ${w.version}` : ""}`, el("div", { class: "hint" }, text(w.content_types.join(", ")))),
      el("td", {}, w.current_jobs.length ? currentJobs(w.current_jobs) : "idle"),
      el("td", {}, ago(w.last_seen_at))));
  }
  function currentJobs(ids) {
    return el("div", {}, ...ids.map((id) => {
      const t = lastTasks.find((x) => x.task_id === id);
      return el("div", {}, el("span", { class: "mono" }, id.slice(-8)), " ", t ? bar(t.progress) : "", t && t.message ? el("div", { class: "hint" }, t.message) : null);
    }));
  }
  async function overview() {
    const [lanes, workers, list] = await Promise.all([
      api("GET", "/api/v1/lanes"), api("GET", "/api/v1/workers"), api("GET", "/api/v1/tasks?status=running&limit=100"),
    ]);
    lastTasks = list.tasks;
    fill("#lanes tbody", lanes.lanes.map((l) => el("tr", {},
      el("td", {}, el("b", {}, { gpu: "GPU lane", cpu: "CPU lane", shared: "Shared lane" }[l.kind]), el("div", { class: "hint mono" }, l.lane)),
      el("td", {}, String(l.queued)), el("td", {}, String(l.running)), el("td", {}, age(l.oldest_queued_age_s)),
      el("td", {}, String(l.workers_online)), el("td", {}, l.note))));
    fill("#workers tbody", workerRows(workers.workers));
    $("#workers-empty").hidden = workers.workers.length > 0;
    if (admin) {
      const all = await api("GET", "/api/v1/admin/overview");
      fill("#all-lanes tbody", all.lanes.map((l) => el("tr", {}, el("td", {}, el("b", {}, text(l.user || "shared"))), el("td", { class: "mono" }, l.lane), el("td", {}, String(l.queued)),
        el("td", {}, String(l.running)), el("td", {}, age(l.oldest_queued_age_s)))));
      $("#all-lanes-empty").hidden = all.lanes.length > 0;
      fill("#shared-workers tbody", workerRows(all.shared_workers.workers));
      $("#shared-empty").hidden = all.shared_workers.workers.length > 0;
    }
  }

  async function tasks() {
    const filter = $("#task-filter").value;
    const list = await api("GET", `/api/v1/tasks?limit=100${filter ? `&status=${filter}` : ""}`);
    lastTasks = list.tasks;
    fill("#tasks tbody", list.tasks.map((t) => el("tr", { class: t.task_id === openTask ? "selected" : "", dataset: { task: t.task_id } },
      el("td", { class: "mono", title: t.task_id }, t.task_id.slice(-8)),
      el("td", {}, text(t.source || t.document_id)),
      el("td", {}, t.content_type),
      el("td", {}, badge(t.status)),
      el("td", {}, bar(t.status === "succeeded" ? 1 : t.progress), el("div", { class: "hint" }, t.stage)),
      el("td", {}, t.status === "failed" || t.status === "dead" ? el("span", { class: "error" }, `${t.error_class || "error"}: ${t.error || ""}`) : text(t.message)),
      el("td", {}, ago(t.created_at)),
      el("td", {},
        el("button", { class: "small secondary", onclick: () => openDetail(t.task_id) }, "Open"),
        !FINAL.has(t.status) ? el("button", { class: "small danger", onclick: () => act("DELETE", `/api/v1/ingest/${t.task_id}`) }, "Cancel") : null,
        ["failed", "dead", "canceled"].includes(t.status) ? el("button", { class: "small", onclick: () => act("POST", `/api/v1/tasks/${t.task_id}/retry`) }, "Retry") : null))));
    $("#tasks-empty").hidden = list.tasks.length > 0;
    $("#live").textContent = `updated ${new Date().toLocaleTimeString()}, every 2 s`;
    if (openTask) {
      const t = list.tasks.find((x) => x.task_id === openTask);
      if (t && !$("#detail").dataset.final) await openDetail(openTask, true);
    }
  }
  async function act(method, path) {
    try { await api(method, path); } catch (e) { $("#live").textContent = explain(e); }
    if (openTask) $("#detail").dataset.final = "";
    await refresh();
  }

  async function openDetail(id, quiet) {
    const t = await api("GET", `/api/v1/status/${encodeURIComponent(id)}`);
    openTask = id;
    const box = $("#detail");
    box.hidden = false;
    box.dataset.final = FINAL.has(t.status) ? "1" : "";
    $("#detail-title").textContent = `Task ${t.task_id}`;
    const rows = [["Status", badge(t.status)], ["Progress", bar(t.status === "succeeded" ? 1 : t.progress)], ["Stage", t.stage],
      [FINAL.has(t.status) ? "Last message" : "Message", text(t.message)], ["Type", t.content_type], ["Lane", t.lane], ["Attempts", `${t.attempts} of ${t.max_attempts}`],
      ["Worker", text(t.worker_id)], ["Document", text(t.document_id)], ["Created", ago(t.created_at)], ["Finished", ago(t.finished_at)]];
    if (t.result && t.result.index) rows.push(["Indexed", plural(t.result.index.chunks, "chunk")]);
    $("#detail-fields").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    const err = $("#detail-error");
    err.hidden = !t.error;
    err.replaceChildren();
    if (t.error) {
      err.append(el("b", {}, `${t.error_class || "error"}: ${t.error}`));
      const why = t.status === "dead" ? `Gave up after ${t.attempts} attempts. ${WHY[t.error_class] || ""}` : WHY[t.error_class];
      if (why) err.append(el("div", { class: "why" }, why));
    }
    const md = t.result && typeof t.result.markdown === "string" ? t.result.markdown : null;
    $("#detail-result-title").hidden = md === null;
    $("#detail-result").replaceChildren(md === null ? "" : window.renderMarkdown(md));
    await artifacts(t.artifacts || []);
    for (const row of document.querySelectorAll("#tasks tbody tr")) row.classList.toggle("selected", row.dataset.task === id);
    if (!quiet) box.scrollIntoView({ behavior: "instant", block: "start" });
  }
  async function artifacts(list) {
    const box = $("#detail-artifacts");
    box.hidden = list.length === 0;
    const figures = [];
    for (const a of list) {
      const resp = await fetch(a.url, { headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY)}` } });
      if (!resp.ok) continue;
      const url = URL.createObjectURL(await resp.blob());
      blobUrls.push(url);
      const link = el("a", { href: url, download: a.name }, a.mime.startsWith("image/") ? el("img", { src: url, alt: a.name }) : a.name);
      figures.push(el("figure", {}, link, el("figcaption", {}, `${a.name} · ${Math.round(a.size / 1024)} KiB`)));
    }
    box.querySelector(".artifacts").replaceChildren(...figures);
  }

  async function documents() {
    const docs = await api("GET", "/api/v1/documents");
    fill("#documents tbody", docs.documents.map((d) => el("tr", {},
      el("td", {}, el("b", {}, d.document_id)), el("td", {}, String(d.chunks)), el("td", {}, text(d.content_type)),
      el("td", {}, text(d.source)), el("td", {}, ago(d.indexed_at)),
      el("td", {}, el("button", { class: "small danger", onclick: () => removeDoc(d.document_id) }, "Delete")))));
    $("#documents-empty").hidden = docs.documents.length > 0;
  }
  async function removeDoc(id) {
    if (!confirm(`Delete every chunk of ${id} from the index?`)) return;
    try { const r = await api("DELETE", `/api/v1/documents/${encodeURIComponent(id)}`); say("#documents-msg", `Deleted ${id} (${r.removed_points} chunks).`, true); }
    catch (e) { say("#documents-msg", explain(e), false); }
    await documents();
  }

  // --- forms -----------------------------------------------------------------------------------
  function options(sel) {
    const raw = $(sel).value.trim();
    if (!raw) return null;
    const parsed = JSON.parse(raw);
    if (typeof parsed !== "object" || Array.isArray(parsed) || parsed === null) throw new Error("options must be a JSON object");
    return parsed;
  }
  async function upload(ev) {
    ev.preventDefault();
    const file = $("#upload-file").files[0];
    if (!file) return;
    const form = new FormData();
    form.append("file", file);
    if ($("#upload-type").value) form.append("content_type", $("#upload-type").value);
    if ($("#upload-doc").value.trim()) form.append("document_id", $("#upload-doc").value.trim());
    try {
      const opts = options("#upload-options");
      if (opts) form.append("options", JSON.stringify(opts));
    } catch (e) { say("#upload-msg", `Processor options: ${e.message}`, false); return; }
    say("#upload-msg", `Uploading ${file.name}…`, true);
    try {
      const r = await api("POST", "/api/v1/ingest/file", form, true);
      say("#upload-msg", `Queued ${file.name} as task ${r.task_id}. Follow it on the Tasks page.`, true);
      $("#upload-form").reset();
    } catch (e) { say("#upload-msg", `Not queued: ${explain(e)}`, false); }
  }
  async function addUrl(ev) {
    ev.preventDefault();
    const body = { url: $("#url").value.trim() };
    if ($("#url-type").value) body.content_type = $("#url-type").value;
    if ($("#url-doc").value.trim()) body.document_id = $("#url-doc").value.trim();
    try {
      const r = await api("POST", "/api/v1/ingest/url", body);
      say("#url-msg", `Queued ${body.url} as task ${r.task_id}. Follow it on the Tasks page.`, true);
      $("#url-form").reset();
    } catch (e) { say("#url-msg", `Not queued: ${explain(e)}`, false); }
  }

  function highlight(textValue, query) {
    const words = [...new Set(query.toLowerCase().split(/\W+/).filter((w) => w.length > 2))];
    if (!words.length) return [textValue];
    const re = new RegExp(`(${words.map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join("|")})`, "gi");
    return textValue.split(re).map((part, n) => (n % 2 ? el("mark", {}, part) : document.createTextNode(part)));
  }
  // Hits are chunks of Markdown: drop the markup so the text reads as text.
  const plain = (md) => md.replace(/^\s{0,3}#{1,6}\s+/gm, "").replace(/(\*\*|__|`)/g, "").replace(/\s+/g, " ").trim();
  function where(loc) {
    const parts = [];
    if (loc.page !== undefined && loc.page !== null) parts.push(`page ${loc.page}`);
    if (loc.start !== undefined && loc.start !== null) parts.push(`${clock(loc.start)}–${clock(loc.end ?? loc.start)}`);
    if (loc.heading_path && loc.heading_path.length) parts.push(loc.heading_path.join(" › "));
    return parts.join(" · ");
  }
  async function search(ev) {
    ev.preventDefault();
    const query = $("#query").value.trim();
    say("#search-msg", "Searching…", true);
    try {
      const r = await api("POST", "/api/v1/search", { query, limit: Number($("#search-limit").value) });
      say("#search-msg", r.results.length ? `${plural(r.results.length, "hit")} for “${query}”` : `No hits for “${query}”.`, true);
      $("#hits").replaceChildren(...r.results.map((h) => el("li", {},
        el("div", { class: "hit-head" }, el("b", {}, h.document_id), el("span", {}, `chunk ${h.chunk_index}`),
          where(h.location) ? el("span", { class: "where" }, where(h.location)) : null,
          el("span", {}, `score ${h.score.toFixed(3)}`), h.source ? el("span", {}, h.source) : null),
        el("div", { class: "hit-text" }, ...highlight(plain(h.text), query)))));
    } catch (e) { say("#search-msg", `Search failed: ${explain(e)}`, false); }
  }

  // --- wiring ----------------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", () => {
    for (const sel of ["#upload-type", "#url-type"]) {
      $(sel).replaceChildren(...TYPES.map((t) => el("option", { value: t }, t || "detect automatically")));
    }
    $("#signin-form").addEventListener("submit", (ev) => { ev.preventDefault(); signIn($("#key").value.trim()); });
    $("#signout").addEventListener("click", () => signOut("Signed out."));
    for (const t of document.querySelectorAll(".tab")) t.addEventListener("click", () => show(t.dataset.page));
    $("#task-filter").addEventListener("change", refresh);
    $("#detail-close").addEventListener("click", () => { openTask = null; $("#detail").hidden = true; refresh(); });
    $("#upload-form").addEventListener("submit", upload);
    $("#url-form").addEventListener("submit", addUrl);
    $("#search-form").addEventListener("submit", search);
    if (sessionStorage.getItem(KEY)) signIn(sessionStorage.getItem(KEY));
  });
})();
