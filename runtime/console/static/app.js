/* Rail console: one page, routes in the hash, live data by server-sent events.
   Every request goes to the console's own /api; nothing is loaded from elsewhere. */
"use strict";
const esc = escapeText;
const state = {info: {read_only: true}, tree: null, overview: null, route: "", timer: 0};
const $ = sel => document.querySelector(sel);

/* ---------- plumbing ---------- */
async function api(path, opts) {
  opts = opts || {};
  const init = {method: opts.method || "GET", headers: {}};
  if (init.method !== "GET") init.headers["X-Rail-Console"] = "1";
  if (opts.body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(opts.body);
  }
  const r = await fetch(path, init);
  const text = await r.text();
  let data;
  try { data = JSON.parse(text); } catch (e) { data = {error: text}; }
  if (!r.ok) throw new Error(data.error || text || r.statusText);
  return data;
}

function toast(msg, bad) {
  const t = $("#toast");
  t.textContent = msg; t.className = "toast" + (bad ? " bad" : ""); t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, bad ? 8000 : 3000);
}

/* A confirmation in the page (no native dialog): with `typed`, the user types it first. */
function confirmDialog(text, typed) {
  return new Promise(resolve => {
    const d = $("#dialog"), input = $("#dialog-input");
    $("#dialog-text").textContent = text + (typed ? ` Type ${typed} to confirm.` : "");
    input.hidden = !typed; input.value = "";
    d.hidden = false;
    if (typed) input.focus();
    const done = ok => { d.hidden = true; $("#dialog-form").onsubmit = null; resolve(ok); };
    $("#dialog-cancel").onclick = () => done(false);
    $("#dialog-form").onsubmit = ev => {
      ev.preventDefault();
      if (typed && input.value !== typed) { input.classList.add("wrong"); return; }
      input.classList.remove("wrong");
      done(true);
    };
  });
}

async function act(what, fn) {
  try { const r = await fn(); toast(what); return r; }
  catch (e) { toast(e.message, true); return null; }
}

const fmtBytes = b => b === null || b === undefined ? "-" :
  b >= 2 ** 30 ? (b / 2 ** 30).toFixed(1) + " GiB" : b >= 2 ** 20 ? (b / 2 ** 20).toFixed(1) + " MiB" :
  b >= 1024 ? (b / 1024).toFixed(1) + " KiB" : b + " B";
function fmtDur(s) {
  if (s === null || s === undefined) return "-";
  s = Math.floor(s);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h" + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
}
const fmtTime = ms => ms ? new Date(ms).toISOString().replace("T", " ").replace("Z", "") : "-";
const badge = s => `<span class="state s-${esc(s)}">${esc(s)}</span>`;
const writable = () => !state.info.read_only;
const enc = encodeURIComponent;
const GROUP_REFRESH_MS = 5000;
const TOPICS_PER_PAGE = 100;

/* ---------- live updates ---------- */
function connectLive() {
  const live = $("#live");
  const source = new EventSource("/api/events");
  source.onopen = () => { live.textContent = "live"; live.className = "live on"; };
  source.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };
  source.addEventListener("tree", ev => {
    state.tree = JSON.parse(ev.data);
    if (state.route === "overview") renderTree();
  });
  source.addEventListener("overview", ev => {
    state.overview = JSON.parse(ev.data);
    if (state.route === "overview") renderOverviewCards();
  });
}

/* ---------- overview and the supervision tree ---------- */
function pageOverview(main) {
  main.innerHTML = `<section id="cards" class="cards"></section>
    <section class="panel"><h2>Supervision tree</h2><div id="tree" class="tree"></div></section>
    <section class="panel"><h2>Throughput (events/s)</h2><div id="throughput"></div></section>`;
  renderOverviewCards(); renderTree();
}

function renderOverviewCards() {
  const o = state.overview, el = $("#cards");
  if (!el) return;
  if (!o) { el.innerHTML = '<p class="muted">waiting for the first scrape…</p>'; return; }
  if (o.error) { el.innerHTML = `<p class="error">broker: ${esc(o.error)}</p>`; return; }
  const t = state.tree, workers = t && t.workers ? t.workers : [];
  const b = o.broker, r = o.rates || {};
  const lag = o.groups.reduce((a, g) => a + g.lag, 0);
  el.innerHTML = `
    <div class="card"><h3>Broker</h3><div class="big mono">${esc(b.endpoint || state.info.broker)}</div>
      <div>pid ${esc(b.pid)} · up ${fmtDur(b.uptime_s)} · ${fmtBytes(b.rss_bytes)}</div>
      ${b.brokers.length ? `<div>cluster: brokers ${b.brokers.join(", ")}, controller ${b.controller}</div>` : ""}</div>
    <div class="card"><h3><a href="#/topics">Topics</a></h3><div class="big" id="topic-count">${o.topics.count}</div>
      <div>${o.topics.partitions} partitions · ${fmtNum(o.topics.events)} events · ${fmtBytes(o.topics.size_bytes)}</div>
      ${o.topics.under_replicated ? `<div class="error">${o.topics.under_replicated} under-replicated</div>` : ""}</div>
    <div class="card"><h3><a href="#/groups">Groups</a></h3><div class="big">${o.groups.length}</div>
      <div>total lag ${fmtNum(lag)}</div></div>
    <div class="card"><h3>Workers</h3><div class="big">${workers.length}</div>
      <div>${workers.filter(w => w.state === "running").length} running${
        workers.some(w => w.state === "failed") ? ' · <span class="error">failed: ' +
        esc(workers.filter(w => w.state === "failed").map(w => w.name).join(", ")) + "</span>" : ""}</div></div>
    <div class="card"><h3>Throughput</h3><div class="big">${fmtNum(r.records_in || 0)}/s in</div>
      <div>${fmtNum(r.records_out || 0)}/s out · ${fmtBytes(r.bytes_in || 0)}/s in</div></div>`;
  const th = $("#throughput");
  if (th) th.innerHTML = lineChart([
    {name: "in", points: o.throughput.map(p => [p.t, p.in])},
    {name: "out", points: o.throughput.map(p => [p.t, p.out])}], {height: 120});
}

function renderTree() {
  const el = $("#tree");
  if (!el) return;
  const t = state.tree;
  if (!state.info.supervised) {
    el.innerHTML = '<p class="muted">started without a supervisor (--control): no tree</p>'; return;
  }
  if (!t) { el.innerHTML = '<p class="muted">waiting for the supervisor…</p>'; return; }
  if (t.error) { el.innerHTML = `<p class="error">supervisor: ${esc(t.error)}</p>`; return; }
  const s = t.supervisor, b = t.broker;
  el.innerHTML = `
    <div class="node root"><span class="kind">supervisor</span> pid ${s.pid} · up ${fmtDur(s.uptime_s)}
      · ${esc(s.control)}${s.stopping ? " · stopping" : ""}</div>
    <div class="children">
      <div class="node" data-worker="brokerd" data-state="${esc(b.state)}">
        <span class="kind">brokerd</span> ${badge(b.state)} ${esc(b.endpoint)}
        ${b.external ? "(external)" : `pid ${b.pid ?? "-"} · restarts ${b.restarts} · CPU ${fmtNum(b.cpu_percent)}% · ${fmtBytes(b.rss)}`}
        ${b.error ? `<div class="error">${esc(b.error)}</div>` : ""}
        ${writable() && !b.external ? '<button class="small" data-restart="brokerd">restart</button>' : ""}
      </div>
      ${t.workers.map(workerNode).join("")}
    </div>`;
}

function workerNode(w) {
  const actions = writable() ? `
    <span class="actions">
      <button class="small" data-restart="${esc(w.name)}">restart</button>
      <button class="small" data-scale="${esc(w.name)}" data-to="${Math.max(0, w.replicas - 1)}" title="one replica less">−</button>
      <button class="small" data-scale="${esc(w.name)}" data-to="${w.replicas + 1}" title="one replica more">+</button>
    </span>` : "";
  return `<div class="node" data-worker="${esc(w.name)}" data-state="${esc(w.state)}">
    <div><span class="kind">worker</span> <b>${esc(w.name)}</b> ${badge(w.state)}
      ${w.pids.length}/${w.replicas} replicas · group <a href="#/group/${enc(w.group)}">${esc(w.group)}</a>
      · topics ${w.topics.map(x => `<a href="#/topic/${enc(x)}">${esc(x)}</a>`).join(", ")}
      · restarts ${w.restarts} · processed ${fmtNum(w.processed)} · ${w.events_per_s === null ? "-" : fmtNum(w.events_per_s)} ev/s
      · lag ${fmtNum(w.lag)}${w.failed ? ` · <a href="#/dlq/${enc(w.topics[0])}">${w.failed} dead-lettered</a>` : ""} ${actions}</div>
    ${w.error ? `<div class="error">${esc(w.error)}</div>` : ""}
    <table class="replicas"><tr><th>replica</th><th>state</th><th>pid</th><th>restarts</th><th>last exit</th>
      <th>uptime</th><th>CPU</th><th>RSS</th><th>events/s</th><th>current event</th></tr>
      ${w.processes.map(r => replicaRow(w, r)).join("")}</table></div>`;
}

function replicaRow(w, r) {
  const h = r.handling;
  const exit = r.last_exit ? `${esc(r.last_exit.how)} (pid ${r.last_exit.pid}, ${esc(r.last_exit.at)})` : "-";
  return `<tr class="replica" data-worker="${esc(w.name)}" data-replica="${r.replica}" data-state="${esc(r.state)}" data-pid="${r.pid ?? ""}">
    <td>${esc(w.name)}.${r.replica}</td><td>${badge(r.state)}</td><td class="pid">${r.pid ?? "-"}</td>
    <td>${r.restarts}</td><td class="exit">${exit}</td><td>${fmtDur(r.uptime_s)}</td>
    <td>${r.cpu_percent === null ? "-" : r.cpu_percent.toFixed(1) + "%"}</td><td>${fmtBytes(r.rss)}</td>
    <td>${r.events_per_s === null ? "-" : fmtNum(r.events_per_s)}</td>
    <td>${h ? `${esc(h.topic)}[${h.partition}]@${h.offset} for ${h.for_s.toFixed(1)}s${
      h.in_flight > 1 ? ` +${h.in_flight - 1} more` : ""}` : "-"}</td></tr>`;
}

document.addEventListener("click", async ev => {
  const b = ev.target.closest("button");
  if (!b) return;
  if (b.dataset.restart) {
    const name = b.dataset.restart;
    if (await confirmDialog(`Restart every replica of ${name}?`))
      act(`restarting ${name}`, () => api(`/api/workers/${enc(name)}/restart`, {method: "POST"}));
  } else if (b.dataset.scale) {
    const name = b.dataset.scale, to = Number(b.dataset.to);
    act(`${name} scaled to ${to}`, () => api(`/api/workers/${enc(name)}/scale`, {method: "POST", body: {replicas: to}}));
  }
});

/* ---------- topics ---------- */
async function pageTopics(main) {
  main.innerHTML = `<section class="panel"><h2>Topics</h2>
    <div class="row"><input id="topic-filter" placeholder="filter by name">
    ${writable() ? `<span class="grow"></span><input id="new-topic" placeholder="new topic name">
      <input id="new-partitions" type="number" min="1" max="1024" value="1" class="narrow" title="partitions">
      <button id="create-topic">Create</button>` : ""}</div>
    <div id="topics-table"><p class="muted">loading…</p></div></section>`;
  const data = await api("/api/topics");
  let first = 0;
  const draw = () => {
    const f = $("#topic-filter").value;
    const rows = data.topics.filter(t => t.name.includes(f));
    if (first >= rows.length) first = 0;
    const shown = rows.slice(first, first + TOPICS_PER_PAGE);
    $("#topics-table").innerHTML = `<div class="row"><span class="muted">${rows.length ? first + 1 : 0}–${first + shown.length} of ${rows.length}</span>
      ${first > 0 ? '<button id="t-prev" class="small">← previous</button>' : ""}
      ${first + TOPICS_PER_PAGE < rows.length ? '<button id="t-next" class="small">next →</button>' : ""}</div>
      <table><tr><th>name</th><th>partitions</th><th>events</th><th>end offsets</th><th>size</th>${
      data.clustered ? "<th>under-replicated</th>" : ""}</tr>${shown.map(t => `
      <tr class="topic-row" data-topic="${esc(t.name)}"><td><a href="#/topic/${enc(t.name)}">${esc(t.name)}</a></td>
      <td>${t.partitions}</td><td>${fmtNum(t.events)}</td><td>${t.end_offset}</td><td>${fmtBytes(t.size_bytes)}</td>
      ${data.clustered ? `<td>${t.under_replicated}</td>` : ""}</tr>`).join("")}</table>`;
    if ($("#t-prev")) $("#t-prev").onclick = () => { first -= TOPICS_PER_PAGE; draw(); };
    if ($("#t-next")) $("#t-next").onclick = () => { first += TOPICS_PER_PAGE; draw(); };
  };
  $("#topic-filter").oninput = () => { first = 0; draw(); };
  draw();
  if (writable()) $("#create-topic").onclick = async () => {
    const name = $("#new-topic").value.trim(), parts = Number($("#new-partitions").value);
    if (!name) return toast("give the topic a name", true);
    if (!await confirmDialog(`Create topic ${name} with ${parts} partition(s)?`)) return;
    if (await act(`created ${name}`, () => api("/api/topics", {method: "POST", body: {name, partitions: parts}})))
      location.hash = "#/topic/" + enc(name);
  };
}

async function pageTopic(main, name) {
  main.innerHTML = `<section class="panel"><h2>Topic ${esc(name)}
    ${writable() ? '<button id="delete-topic" class="danger small">delete</button>' : ""}</h2>
    <div id="topic-detail"><p class="muted">loading…</p></div></section>
    <section class="panel"><h2>Messages</h2>${browserForm()}<div id="messages"></div></section>`;
  const t = await api(`/api/topics/${enc(name)}`);
  $("#topic-detail").innerHTML = `<p>${t.partitions} partitions · ${fmtNum(t.events)} events · ${fmtBytes(t.size_bytes)}
    · retention ${Object.entries(t.retention).map(([k, v]) => `${esc(k)}=${esc(v)}`).join(", ") || "-"}</p>
    <table><tr><th>partition</th><th>start offset</th><th>end offset</th><th>events</th><th>size</th>
    ${t.clustered ? "<th>leader</th><th>replicas</th><th>ISR</th>" : ""}</tr>
    ${t.partition_list.map(p => `<tr><td>${p.partition}</td><td>${p.start_offset}</td><td>${p.end_offset}</td>
      <td>${p.events}</td><td>${fmtBytes(p.size_bytes)}</td>${t.clustered ?
      `<td>${p.leader}</td><td>${p.replicas.join(",")}</td><td class="${p.isr.length < p.replicas.length ? "error" : ""}">${p.isr.join(",")}</td>` : ""}</tr>`).join("")}</table>
    <details><summary>configuration</summary><pre>${esc(JSON.stringify(t.config, null, 2))}</pre></details>`;
  const sel = $("#b-partition");
  sel.innerHTML = '<option value="all">all partitions</option>' +
    t.partition_list.map(p => `<option value="${p.partition}">partition ${p.partition}</option>`).join("");
  if (writable()) $("#delete-topic").onclick = async () => {
    if (!await confirmDialog(`Delete topic ${name} and all its events for good?`, name)) return;
    if (await act(`deleted ${name}`, () => api(`/api/topics/${enc(name)}?confirm=${enc(name)}`, {method: "DELETE"})))
      location.hash = "#/topics";
  };
  const run = cursor => loadMessages(name, cursor);
  $("#browser").onsubmit = ev => { ev.preventDefault(); run(""); };
  $("#b-from").onchange = () => {
    $("#b-offset").hidden = $("#b-from").value !== "offset";
    $("#b-time").hidden = $("#b-from").value !== "timestamp";
  };
  await run("");
}

function browserForm() {
  return `<form id="browser" class="row wrap">
    <select id="b-partition"></select>
    <select id="b-from"><option value="end">from the end</option><option value="start">from the start</option>
      <option value="offset">from offset</option><option value="timestamp">from time</option></select>
    <input id="b-offset" type="number" min="0" placeholder="offset" class="narrow" hidden>
    <input id="b-time" type="datetime-local" step="1" hidden>
    <input id="b-key" placeholder="key contains">
    <input id="b-value" placeholder="value contains">
    <select id="b-decode"><option>auto</option><option>json</option><option>msgpack</option><option>text</option><option>hex</option></select>
    <select id="b-limit"><option>20</option><option selected>50</option><option>200</option><option>1000</option></select>
    <button type="submit" id="b-go">Show</button></form>`;
}

async function loadMessages(topic, cursor) {
  const q = new URLSearchParams({partition: $("#b-partition").value, from: $("#b-from").value,
    limit: $("#b-limit").value, decode: $("#b-decode").value, key: $("#b-key").value, value: $("#b-value").value});
  if ($("#b-from").value === "offset") q.set("offset", $("#b-offset").value || "0");
  if ($("#b-from").value === "timestamp") q.set("timestamp", String(new Date($("#b-time").value).getTime() || 0));
  if (cursor) q.set("cursor", cursor);
  const out = $("#messages");
  out.innerHTML = '<p class="muted">reading…</p>';
  let page;
  try { page = await api(`/api/topics/${enc(topic)}/messages?${q}`); }
  catch (e) { out.innerHTML = `<p class="error">${esc(e.message)}</p>`; return; }
  const searching = $("#b-key").value || $("#b-value").value;
  out.innerHTML = `<p class="muted">${page.messages.length} shown${searching ? `, ${page.scanned} read` : ""}
    ${page.more ? "· more after" : "· up to the end"}</p>
    <div class="row">${page.previous ? `<button id="m-prev" data-cursor="${esc(page.previous)}">← earlier</button>` : ""}
    ${page.more ? `<button id="m-next" data-cursor="${esc(page.cursor)}">${searching ? "search on →" : "later →"}</button>` : ""}</div>
    <table class="messages"><tr><th>partition</th><th>offset</th><th>time</th><th>key</th><th>value</th><th>headers</th></tr>
    ${page.messages.map(m => `<tr class="message" data-partition="${m.partition}" data-offset="${m.offset}">
      <td>${m.partition}</td><td>${m.offset}</td><td>${fmtTime(m.timestamp)}</td>
      <td class="key">${esc(m.key.text)}</td>
      <td class="value"><span class="as">${esc(m.value.as)}</span><pre>${esc(m.value.text)}</pre></td>
      <td><pre>${Object.keys(m.headers).length ? esc(JSON.stringify(m.headers, null, 1)) : ""}</pre></td></tr>`).join("")}</table>`;
  for (const id of ["#m-prev", "#m-next"]) {
    const b = $(id);
    if (b) b.onclick = () => loadMessages(topic, b.dataset.cursor);
  }
}

/* ---------- consumer groups ---------- */
async function pageGroups(main) {
  main.innerHTML = '<section class="panel"><h2>Consumer groups</h2><div id="groups"><p class="muted">loading…</p></div></section>';
  const data = await api("/api/groups");
  $("#groups").innerHTML = data.groups.length ? `<table><tr><th>group</th><th>state</th><th>members</th><th>generation</th><th>lag</th></tr>
    ${data.groups.map(g => `<tr class="group-row" data-group="${esc(g.group)}"><td><a href="#/group/${enc(g.group)}">${esc(g.group)}</a></td>
    <td>${badge(g.state)}</td><td>${g.members.length}</td><td>${g.generation}</td><td>${fmtNum(g.lag)}</td></tr>`).join("")}</table>`
    : '<p class="muted">no groups yet</p>';
}

async function pageGroup(main, name) {
  main.innerHTML = `<section class="panel"><h2>Group ${esc(name)}</h2><div id="group"><p class="muted">loading…</p></div></section>
    <section class="panel"><h2>Lag over the last hour</h2><div id="lag-chart"></div></section>
    ${writable() ? `<section class="panel"><h2>Reset offsets</h2><form id="reset" class="row wrap">
      <input id="r-topic" placeholder="topic"><input id="r-partition" type="number" min="0" placeholder="partition (all)" class="narrow">
      <select id="r-to"><option value="earliest">to earliest</option><option value="latest">to latest</option>
      <option value="offset">to offset</option><option value="timestamp">to time (ms)</option></select>
      <input id="r-value" type="number" min="0" placeholder="offset or ms" class="narrow">
      <button class="danger">Reset</button></form>
      <p class="muted">Only a group without live members can be reset: scale its worker to 0 on the tree first.</p></section>` : ""}`;
  const g = await drawGroup(name);
  state.timer = setInterval(() => drawGroup(name).catch(e => toast(e.message, true)), GROUP_REFRESH_MS);
  if (writable()) {
    if (g.partitions.length) $("#r-topic").value = g.partitions[0].topic;
    $("#reset").onsubmit = async ev => {
      ev.preventDefault();
      const topic = $("#r-topic").value, to = $("#r-to").value;
      if (!await confirmDialog(`Move group ${name}'s committed offsets on ${topic} ${to}?`)) return;
      const r = await act(`reset ${name} on ${topic}`, () => api(`/api/groups/${enc(name)}/reset`, {method: "POST",
        body: {topic, to, value: Number($("#r-value").value || 0), partition: $("#r-partition").value}}));
      if (r) drawGroup(name);
    };
  }
}

/* The group's members, partitions and lag chart (redrawn every GROUP_REFRESH_MS). */
async function drawGroup(name) {
  const g = await api(`/api/groups/${enc(name)}`);
  $("#group").innerHTML = `<p>${badge(g.state)} generation ${g.generation} · lag ${fmtNum(g.lag)}</p>
    <h3>Members</h3>${g.members.length ? `<table><tr><th>member</th><th>client</th><th>assignment</th><th>last seen</th></tr>
    ${g.members.map(m => `<tr><td>${esc(m.member_id)}</td><td>${esc(m.client_id)}</td><td>${esc(m.assignment.join(", "))}</td>
      <td>${m.last_seen_ms_ago} ms ago</td></tr>`).join("")}</table>` : '<p class="muted">no live members</p>'}
    <h3>Partitions</h3><table><tr><th>topic</th><th>partition</th><th>committed</th><th>end offset</th><th>lag</th><th>owner</th></tr>
    ${g.partitions.map(p => `<tr class="lag-row"><td>${esc(p.topic)}</td><td>${p.partition}</td><td>${p.committed ?? "-"}</td>
      <td>${p.end_offset}</td><td>${p.lag}</td><td>${esc(p.owner ?? "-")}</td></tr>`).join("")}</table>`;
  const hist = g.lag_history;
  $("#lag-chart").innerHTML = lineChart(Object.entries(hist).map(([k, pts]) => ({name: k || "total", points: pts})), {height: 160});
  return g;
}

/* ---------- dead letters ---------- */
async function pageDlqs(main) {
  main.innerHTML = '<section class="panel"><h2>Dead letters</h2><div id="dlqs"><p class="muted">loading…</p></div></section>';
  const data = await api("/api/dlq");
  $("#dlqs").innerHTML = data.dlqs.length ? `<table><tr><th>dead-letter topic</th><th>source</th><th>letters</th></tr>
    ${data.dlqs.map(d => `<tr><td><a href="#/dlq/${enc(d.source)}">${esc(d.dlq)}</a></td><td>${esc(d.source)}</td><td>${d.count}</td></tr>`).join("")}</table>`
    : '<p class="muted">no dead-letter topics: nothing has failed</p>';
}

async function pageDlq(main, topic) {
  main.innerHTML = `<section class="panel"><h2>Dead letters of ${esc(topic)}</h2>
    ${writable() ? `<div class="row"><button id="replay">Replay selected</button><span class="grow"></span>
      <button id="purge" class="danger">Purge all</button></div>` : ""}
    <div id="letters"><p class="muted">loading…</p></div></section>`;
  const data = await api(`/api/dlq/${enc(topic)}`);
  $("#letters").innerHTML = `<p class="muted">${data.total} in ${esc(data.dlq)}${data.letters.length < data.total ? `, the newest ${data.letters.length} shown` : ""}</p>
    <table><tr><th></th><th>where</th><th>from</th><th>attempts</th><th>error</th><th>value</th><th>replayed</th></tr>
    ${data.letters.map(l => `<tr class="letter" data-partition="${l.partition}" data-offset="${l.offset}">
      <td>${writable() ? `<input type="checkbox" class="pick" ${l.replayed ? "" : "checked"}>` : ""}</td>
      <td>[${l.partition}]@${l.offset}</td><td>${esc(l.source ?? "-")}[${esc(l.source_partition ?? "?")}]@${esc(l.source_offset ?? "?")}</td>
      <td>${esc(l.attempts ?? "?")}</td>
      <td><details><summary class="error">${esc(l.error ?? "?")}</summary><pre>${esc(l.stack ?? "")}</pre></details></td>
      <td><pre>${esc(l.value.text)}</pre></td>
      <td class="replayed">${l.replayed ? "yes" + (l.replayed_to ? " → " + esc(l.replayed_to) : "") : "no"}</td></tr>`).join("")}</table>`;
  if (!writable()) return;
  $("#replay").onclick = async () => {
    const picks = [...document.querySelectorAll(".letter")].filter(r => r.querySelector(".pick").checked)
      .map(r => [Number(r.dataset.partition), Number(r.dataset.offset)]);
    if (!picks.length) return toast("select the dead letters to replay", true);
    const r = await act(`replaying ${picks.length}`, () => api(`/api/dlq/${enc(topic)}/replay`, {method: "POST", body: {picks}}));
    if (r) { toast(`replayed ${r.replayed.length}${r.skipped ? `, ${r.skipped} replayed before skipped` : ""}`); route(); }
  };
  $("#purge").onclick = async () => {
    if (!await confirmDialog(`Delete every dead letter of ${topic} for good?`, topic)) return;
    if (await act("purged", () => api(`/api/dlq/${enc(topic)}/purge`, {method: "POST", body: {confirm: topic}}))) route();
  };
}

/* ---------- routing ---------- */
const ROUTES = [
  [/^#?\/?$/, "overview", m => pageOverview],
  [/^#\/topics$/, "topics", m => pageTopics],
  [/^#\/topic\/(.+)$/, "topics", m => main => pageTopic(main, decodeURIComponent(m[1]))],
  [/^#\/groups$/, "groups", m => pageGroups],
  [/^#\/group\/(.+)$/, "groups", m => main => pageGroup(main, decodeURIComponent(m[1]))],
  [/^#\/dlq$/, "dlq", m => pageDlqs],
  [/^#\/dlq\/(.+)$/, "dlq", m => main => pageDlq(main, decodeURIComponent(m[1]))],
];

async function route() {
  const hash = location.hash;
  clearInterval(state.timer);  // a page's own refresh ends when another page opens
  for (const [re, nav, page] of ROUTES) {
    const m = hash.match(re);
    if (!m) continue;
    state.route = nav === "overview" ? "overview" : hash;
    document.querySelectorAll("nav a").forEach(a => a.classList.toggle("here", a.dataset.nav === nav));
    const main = $("#page");
    try { await page(m)(main); }
    catch (e) { main.innerHTML = `<section class="panel"><p class="error">${esc(e.message)}</p></section>`; }
    main.dataset.ready = hash || "#/";
    return;
  }
  $("#page").innerHTML = '<p class="error">no such page</p>';
}

async function boot() {
  state.info = await api("/api/info");
  $("#mode").textContent = state.info.read_only ? "read-only" : "";
  const [tree, overview] = await Promise.all([api("/api/live/tree"), api("/api/live/overview")]);
  if (!tree.pending) state.tree = tree;
  if (!overview.pending) state.overview = overview;
  window.addEventListener("hashchange", route);
  connectLive();
  route();
}
boot();
