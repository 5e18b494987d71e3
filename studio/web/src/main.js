// kitebridge studio: the page. Lists the templates, edits one, and as you type renders it on the
// server (POST /api/render) and draws what the destination would show.
import { createEditor } from "./editor.js";
import { slackMessage, blockKitUrl, esc } from "./slack.js";
import { cardOf, drawCard, schemaProblems } from "./teams.js";

const $ = (sel) => document.querySelector(sel);
const token = document.querySelector('meta[name="kb-token"]')?.content ?? "";
const DEBOUNCE_MS = 120;

const state = {
  info: null,
  templates: [], // from /api/templates
  open: null, // { kind, name }
  buffers: new Map(), // "kind/name" → edited source (unsaved)
  sample: null, // sample id, or null when the pasted payload is used
  payload: null, // the pasted payload in use
  renderSeq: 0,
  drawnSeq: 0,
  lastEdit: performance.now(),
  timer: 0,
  lastBody: null,
};
document.body.dataset.renders = "0";

// ---------- the API ----------

async function api(method, path, body, { text = false } = {}) {
  const headers = {};
  if (method !== "GET") headers["X-Kitebridge-Token"] = token;
  let payload;
  if (body !== undefined) {
    headers["Content-Type"] = text ? "text/plain; charset=utf-8" : "application/json";
    payload = text ? body : JSON.stringify(body);
  }
  const res = await fetch(path, { method, headers, body: payload, credentials: "same-origin", cache: "no-store" });
  let data = null;
  const raw = await res.text();
  try {
    data = raw ? JSON.parse(raw) : null;
  } catch {
    data = { error: raw || res.statusText };
  }
  return { ok: res.ok, status: res.status, data };
}

const key = (kind, name) => `${kind}/${name}`;
const current = () => state.templates.find((t) => state.open && t.kind === state.open.kind && t.name === state.open.name);

/** What the render/explain/send requests say about the event. */
function eventChoice() {
  if (state.sample == null && state.payload) {
    return state.payloadEvent ? { payload: state.payload, event: state.payloadEvent } : { payload: state.payload };
  }
  return { sample: state.sample };
}

// ---------- the template list ----------

function drawTemplateList() {
  const list = $("#template-list");
  list.replaceChildren();
  const kinds = state.info?.kinds ?? ["slack", "teams", "console", "webhook"];
  for (const kind of kinds) {
    const group = document.createElement("div");
    group.className = "tgroup";
    const head = document.createElement("div");
    head.className = "tgroup-head";
    head.innerHTML = `<span class="kind-chip ${esc(kind)}">${esc(kind)}</span>`;
    const add = document.createElement("button");
    add.type = "button";
    add.className = "ghost small add";
    add.title = `New ${kind} template`;
    add.textContent = "+";
    add.addEventListener("click", () => newTemplate(kind));
    head.appendChild(add);
    group.appendChild(head);
    const items = state.templates
      .filter((t) => t.kind === kind)
      .sort((a, b) => Number(a.partial) - Number(b.partial) || a.name.localeCompare(b.name));
    for (const t of items) {
      const el = document.createElement("button");
      el.type = "button";
      el.className = "titem";
      el.dataset.template = "";
      el.dataset.kind = t.kind;
      el.dataset.name = t.name;
      if (t.partial) el.classList.add("partial");
      if (state.open && state.open.kind === t.kind && state.open.name === t.name) el.classList.add("active");
      const badge = t.overridden ? "overridden" : t.builtin ? "builtin" : "custom";
      const badgeText = t.overridden ? "overridden" : t.builtin ? "built-in" : "file";
      const dirty = state.buffers.has(key(t.kind, t.name)) ? `<span class="dirty" title="unsaved changes">●</span>` : "";
      el.innerHTML = `<span class="tname">${esc(t.name)}</span>${dirty}<span class="badge ${badge}">${badgeText}</span>`;
      el.title = t.partial ? `${t.name}: a partial, shown through the template the event would get` : t.name;
      el.addEventListener("click", () => openTemplate(t.kind, t.name));
      group.appendChild(el);
    }
    list.appendChild(group);
  }
}

function newTemplate(kind) {
  const name = window.prompt(`Name of the new ${kind} template (e.g. build.finished, or _partial):`);
  if (!name) return;
  if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$/.test(name) || name.includes("..")) {
    window.alert("A template name holds letters, digits, _, - and . (not starting with a dot), 64 at most.");
    return;
  }
  if (!state.templates.some((t) => t.kind === kind && t.name === name)) {
    const base = state.templates.find((t) => t.kind === kind && t.name === "default");
    state.templates.push({ kind, name, source: base?.source ?? "", builtin: false, overridden: false, partial: name.startsWith("_"), unsaved: true });
    state.buffers.set(key(kind, name), base?.source ?? "");
  }
  openTemplate(kind, name);
}

// ---------- opening and editing ----------

let editor;

function openTemplate(kind, name) {
  const t = state.templates.find((x) => x.kind === kind && x.name === name);
  if (!t) throw new Error(`no ${kind} template named ${name}`);
  state.open = { kind, name };
  const source = state.buffers.get(key(kind, name)) ?? t.source;
  editor.setText(source, { kind });
  $("#open-kind").textContent = kind;
  $("#open-kind").className = `kind-chip ${kind}`;
  $("#open-name").textContent = name;
  $("#open-badge").innerHTML = t.overridden
    ? `<span class="badge overridden">overrides the built-in</span>`
    : t.builtin
      ? `<span class="badge builtin">built-in</span>`
      : t.unsaved
        ? `<span class="badge custom">new</span>`
        : `<span class="badge custom">file</span>`;
  $("#save").disabled = false;
  $("#save-result").textContent = "";
  $("#save-result").className = "result";
  updateDirty();
  for (const id of ["slack", "teams", "console", "webhook"]) $(`#preview-${id}`).hidden = id !== kind;
  $("#blockkit-link").hidden = kind !== "slack";
  drawTemplateList();
  drawSendDestinations();
  history.replaceState(null, "", `#${kind}/${name}`);
  state.lastEdit = performance.now();
  scheduleRender(0);
}

function updateDirty() {
  const t = current();
  if (!t) return;
  const k = key(t.kind, t.name);
  const text = editor.getText();
  const was = state.buffers.has(k);
  if (text === t.source && !t.unsaved) state.buffers.delete(k);
  else state.buffers.set(k, text);
  $("#dirty").hidden = !state.buffers.has(k);
  if (was !== state.buffers.has(k)) drawTemplateList();
}

function onEdit() {
  state.lastEdit = performance.now();
  updateDirty();
  scheduleRender(DEBOUNCE_MS);
}

// ---------- rendering ----------

function scheduleRender(delay) {
  clearTimeout(state.timer);
  state.timer = setTimeout(render, delay);
}

async function render() {
  if (!state.open) return;
  if (state.sample == null && !state.payload) return;
  const seq = ++state.renderSeq;
  const { kind, name } = state.open;
  const started = state.lastEdit;
  let result;
  try {
    const res = await api("POST", "/api/render", { kind, name, source: editor.getText(), ...eventChoice() });
    if (res.ok) result = res.data;
    else
      result = {
        body: null,
        text: "",
        problems: [{ line: null, column: null, message: res.data?.error ?? `the server answered ${res.status}`, source: "payload" }],
      };
  } catch (e) {
    result = { body: null, text: "", problems: [{ line: null, column: null, message: `the studio server cannot be reached: ${e.message}`, source: "payload" }] };
  }
  // A newer rendering was asked for (or another template opened) meanwhile: draw only that one.
  if (seq !== state.renderSeq || !state.open || state.open.kind !== kind || state.open.name !== name) return;
  draw(kind, result);
  state.drawnSeq = seq;
  document.body.dataset.lastRenderMs = String(Math.round(performance.now() - started));
  document.body.dataset.renders = String(Number(document.body.dataset.renders) + 1);
}

function draw(kind, result) {
  const problems = [...(result.problems ?? [])];
  const body = result.body;
  state.lastBody = result;
  // The exact body.
  const exact = body == null ? result.text ?? "" : typeof body === "string" ? body : JSON.stringify(body, null, 2);
  $("#body").textContent = exact;
  $("#body").classList.toggle("empty", !exact);
  $("#preview-template").textContent =
    result.template && result.template !== state.open.name ? `· seen through “${result.template}”` : "";
  $("#render-ms").textContent = typeof result.ms === "number" ? `rendered in ${result.ms.toFixed(1)} ms` : "";

  if (kind === "slack") {
    const el = $("#preview-slack");
    if (body && typeof body === "object") {
      el.innerHTML = slackMessage(body);
      $("#blockkit-link").href = blockKitUrl(body);
    } else {
      el.innerHTML = `<p class="muted nothing">No message: see the problems.</p>`;
      $("#blockkit-link").href = blockKitUrl({});
    }
  } else if (kind === "teams") {
    const host = $("#teams-card");
    const warn = $("#teams-warnings");
    warn.replaceChildren();
    if (body && typeof body === "object") {
      const { card, error } = cardOf(body);
      if (error) {
        host.innerHTML = `<p class="muted nothing">No card: ${esc(error)}.</p>`;
        problems.push({ line: null, column: null, message: error, source: "shape" });
      } else {
        const warnings = drawCard(host, card);
        for (const w of warnings) {
          const li = document.createElement("li");
          li.textContent = w;
          warn.appendChild(li);
        }
        for (const v of schemaProblems(card)) problems.push({ line: null, column: null, message: v, source: "schema" });
      }
    } else {
      host.innerHTML = `<p class="muted nothing">No card: see the problems.</p>`;
    }
    warn.hidden = !warn.children.length;
  } else if (kind === "console") {
    $("#preview-console").textContent = body == null ? result.text ?? "" : typeof body === "string" ? body : exact;
  }
  drawProblems(problems);
}

function drawProblems(problems) {
  const ul = $("#problems");
  ul.replaceChildren();
  for (const p of problems) {
    const li = document.createElement("li");
    li.className = `problem ${p.source ?? ""}`;
    li.dataset.line = p.line ?? "";
    li.dataset.source = p.source ?? "";
    const where = p.line ? `<span class="where">line ${p.line}${p.column ? `:${p.column}` : ""}</span>` : "";
    li.innerHTML = `<span class="src">${esc(p.source ?? "")}</span>${where}<span class="msg"></span>`;
    li.querySelector(".msg").textContent = p.message;
    if (p.line) {
      li.tabIndex = 0;
      li.title = "Go to the line";
      const go = () => editor.goTo(p.line, p.column);
      li.addEventListener("click", go);
      li.addEventListener("keydown", (e) => e.key === "Enter" && go());
    }
    ul.appendChild(li);
  }
  $("#problem-count").textContent = String(problems.length);
  $("#problem-count").classList.toggle("none", !problems.length);
  if (!problems.length) {
    const li = document.createElement("li");
    li.className = "no-problems";
    li.textContent = "No problems.";
    ul.appendChild(li);
  }
  editor.showProblems(problems);
}

// ---------- samples, pasted payloads, the route tester ----------

async function loadSamples() {
  const res = await api("GET", "/api/samples");
  const select = $("#sample");
  select.replaceChildren();
  const groups = { builtin: "Built-in samples", file: "Sample files", store: "Recent events (store)" };
  for (const [origin, label] of Object.entries(groups)) {
    const items = (res.data ?? []).filter((s) => s.origin === origin);
    if (!items.length) continue;
    const og = document.createElement("optgroup");
    og.label = label;
    for (const s of items) {
      const o = document.createElement("option");
      o.value = s.id;
      o.textContent = s.label;
      og.appendChild(o);
    }
    select.appendChild(og);
  }
  const pasted = document.createElement("option");
  pasted.value = "";
  pasted.textContent = "— the pasted payload —";
  pasted.disabled = true;
  pasted.id = "sample-pasted";
  select.appendChild(pasted);
  const preferred = (res.data ?? []).find((s) => s.id === "builtin:build.finished") ?? res.data?.[0];
  state.sample = preferred?.id ?? null;
  select.value = state.sample ?? "";
}

async function prefillPayload(id) {
  if (!id) return;
  const res = await api("GET", `/api/samples/${encodeURIComponent(id)}`);
  if (res.ok && state.sample === id) {
    $("#payload").value = JSON.stringify(res.data.payload, null, 2);
    $("#payload-status").textContent = `prefilled with ${id}`;
  }
}

function chooseSample(id) {
  state.sample = id;
  state.payload = null;
  $("#sample-pasted").disabled = true;
  prefillPayload(id);
  explain();
  state.lastEdit = performance.now();
  scheduleRender(0);
}

function usePayload() {
  const status = $("#payload-status");
  let payload;
  try {
    payload = JSON.parse($("#payload").value);
  } catch (e) {
    status.textContent = `not JSON: ${e.message}`;
    status.className = "bad";
    return;
  }
  if (!payload || typeof payload !== "object" || Array.isArray(payload)) {
    status.textContent = "the payload must be a JSON object";
    status.className = "bad";
    return;
  }
  state.payload = payload;
  state.payloadEvent = $("#payload-event").value.trim() || null;
  state.sample = null;
  const pasted = $("#sample-pasted");
  pasted.disabled = false;
  $("#sample").value = "";
  const event = state.payloadEvent ?? payload.event;
  status.textContent = `using the pasted payload${event ? ` (${event})` : ""}`;
  status.className = "good";
  explain();
  state.lastEdit = performance.now();
  scheduleRender(0);
}

let explainSeq = 0;
async function explain() {
  const seq = ++explainSeq;
  const out = $("#routes");
  const res = await api("POST", "/api/explain", eventChoice()).catch((e) => ({ ok: false, data: { error: e.message } }));
  if (seq !== explainSeq) return;
  if (!res.ok) {
    out.innerHTML = `<p class="bad">${esc(res.data?.error ?? "the route tester failed")}</p>`;
    return;
  }
  const d = res.data;
  const routes = (d.routes ?? [])
    .map(
      (r) =>
        `<li class="route ${r.matched ? "matched" : "unmatched"}"><span class="mark">${r.matched ? "✓" : "✗"}</span><span class="rname">${esc(
          r.route,
        )}</span><span class="reason">${esc(r.reason)}</span></li>`,
    )
    .join("");
  const deliveries = (d.deliveries ?? [])
    .map(
      (x) =>
        `<tr class="${x.enabled ? "" : "disabled"}"><td>${esc(x.destination)}</td><td><span class="kind-chip ${esc(x.kind)}">${esc(
          x.kind,
        )}</span></td><td><button type="button" class="linkish" data-open-kind="${esc(templateKindOf(x))}" data-open-name="${esc(
          x.template,
        )}">${esc(x.template)}</button></td><td class="muted">${esc(x.route)}${x.enabled ? "" : " · disabled"}</td></tr>`,
    )
    .join("");
  out.innerHTML = `<div class="event">event <code>${esc(d.event)}</code></div><ul class="routes">${routes || '<li class="muted">No routes.</li>'}</ul>${
    deliveries
      ? `<table class="deliveries"><thead><tr><th>destination</th><th>kind</th><th>template</th><th>route</th></tr></thead><tbody>${deliveries}</tbody></table>`
      : `<p class="muted">No destination gets this event.</p>`
  }`;
  for (const b of out.querySelectorAll("[data-open-kind]")) {
    b.addEventListener("click", () => {
      const k = b.dataset.openKind;
      const n = b.dataset.openName;
      if (state.templates.some((t) => t.kind === k && t.name === n)) openTemplate(k, n);
    });
  }
}

function templateKindOf(delivery) {
  const dest = state.info?.destinations?.find((d) => d.name === delivery.destination);
  return dest?.template_kind ?? delivery.kind;
}

// ---------- save and send ----------

async function save() {
  const t = current();
  if (!t) return;
  const out = $("#save-result");
  out.className = "result";
  out.textContent = "Saving…";
  const source = editor.getText();
  const res = await api("PUT", `/api/templates/${encodeURIComponent(t.kind)}/${encodeURIComponent(t.name)}`, source, { text: true }).catch(
    (e) => ({ ok: false, status: 0, data: { error: e.message } }),
  );
  if (res.ok) {
    out.className = "result good";
    out.textContent = res.data?.message ?? `Saved ${res.data?.saved ?? ""}`;
    out.title = res.data?.saved ?? "";
    t.source = source;
    t.unsaved = false;
    state.buffers.delete(key(t.kind, t.name));
    await reloadTemplates();
    updateDirty();
  } else if (res.data?.problems) {
    out.className = "result bad";
    out.textContent = `Not saved: ${res.data.problems.length} problem${res.data.problems.length === 1 ? "" : "s"} (listed below).`;
    drawProblems(res.data.problems);
  } else {
    out.className = "result bad";
    out.textContent = `Not saved: ${res.data?.error ?? `the server answered ${res.status}`}`;
  }
}

async function reloadTemplates() {
  const res = await api("GET", "/api/templates");
  if (!res.ok) return;
  const local = state.templates.filter((t) => t.unsaved && !res.data.some((x) => x.kind === t.kind && x.name === t.name));
  state.templates = [...res.data, ...local];
  drawTemplateList();
  const t = current();
  if (t) $("#open-badge").innerHTML = t.overridden ? `<span class="badge overridden">overrides the built-in</span>` : t.builtin ? `<span class="badge builtin">built-in</span>` : `<span class="badge custom">file</span>`;
}

function drawSendDestinations() {
  const panel = $("#send-panel");
  panel.hidden = !state.info?.allow_send;
  if (panel.hidden) return;
  const select = $("#send-destination");
  const before = select.value;
  select.replaceChildren();
  const kind = state.open?.kind;
  for (const d of state.info.destinations ?? []) {
    const o = document.createElement("option");
    o.value = d.name;
    o.textContent = `${d.name} (${d.kind}${d.enabled ? "" : ", disabled"})`;
    if (kind && d.template_kind !== kind) {
      o.disabled = true;
      o.textContent += ` — renders ${d.template_kind}`;
    }
    select.appendChild(o);
  }
  const firstOk = [...select.options].find((o) => !o.disabled);
  select.value = [...select.options].some((o) => o.value === before && !o.disabled) ? before : firstOk?.value ?? "";
  $("#send").disabled = !firstOk;
}

async function send() {
  const out = $("#send-result");
  const destination = $("#send-destination").value;
  if (!destination || !state.open) return;
  out.className = "result";
  out.textContent = `Sending to ${destination}…`;
  const res = await api("POST", "/api/send", {
    destination,
    kind: state.open.kind,
    name: state.open.name,
    source: editor.getText(),
    ...eventChoice(),
  }).catch((e) => ({ ok: false, status: 0, data: { error: e.message } }));
  if (res.ok) {
    const d = res.data;
    out.className = `result ${d.outcome === "sent" ? "good" : "bad"}`;
    out.textContent = `${d.outcome}${d.status != null ? ` · HTTP ${d.status}` : ""}${d.reason ? ` · ${d.reason}` : ""}${
      typeof d.ms === "number" ? ` · ${Math.round(d.ms)} ms` : ""
    }`;
  } else if (res.data?.problems) {
    out.className = "result bad";
    out.textContent = `Not sent: ${res.data.problems.map((p) => p.message).join("; ")}`;
  } else {
    out.className = "result bad";
    out.textContent = `Not sent: ${res.data?.error ?? `the server answered ${res.status}`}`;
  }
}

// ---------- start ----------

async function start() {
  editor = createEditor($("#editor"), onEdit);
  $("#sample").addEventListener("change", (e) => e.target.value && chooseSample(e.target.value));
  $("#use-payload").addEventListener("click", usePayload);
  $("#toggle-paste").addEventListener("click", () => {
    const panel = $("#paste-panel");
    panel.hidden = !panel.hidden;
    $("#toggle-paste").setAttribute("aria-expanded", String(!panel.hidden));
  });
  $("#save").addEventListener("click", save);
  $("#send").addEventListener("click", send);
  $("#copy-body").addEventListener("click", (e) => {
    e.preventDefault();
    navigator.clipboard?.writeText($("#body").textContent);
  });
  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "s") {
      e.preventDefault();
      save();
    }
  });
  window.addEventListener("beforeunload", (e) => {
    if (state.buffers.size) e.preventDefault();
  });

  const [info, templates] = await Promise.all([api("GET", "/api/info"), api("GET", "/api/templates")]);
  if (!info.ok || !templates.ok) throw new Error(info.data?.error ?? templates.data?.error ?? "the studio API did not answer");
  state.info = info.data;
  state.templates = templates.data;
  $("#config-path").textContent = `${state.info.config}${state.info.templates_dir ? ` · templates in ${state.info.templates_dir}` : " · no [templates] dir: saving is off"}`;
  if (state.info.store) $("#config-path").title = String(state.info.store);
  await loadSamples();
  drawTemplateList();
  prefillPayload(state.sample);
  explain();
  const [hk, hn] = decodeURIComponent(location.hash.slice(1)).split("/");
  const first =
    state.templates.find((t) => t.kind === hk && t.name === hn) ??
    state.templates.find((t) => t.kind === "slack" && t.name === "build") ??
    state.templates.find((t) => !t.partial) ??
    state.templates[0];
  if (first) openTemplate(first.kind, first.name);
}

window.kbStudio = {
  getSource: () => editor.getText(),
  setSource: (text) => {
    editor.setText(text, { notify: true });
  },
  open: (kind, name) => openTemplate(kind, name),
};

start().catch((e) => {
  const el = $("#fatal");
  el.hidden = false;
  el.textContent = `kitebridge studio could not start: ${e.message ?? e}`;
  console.error(e);
});
