// wsregistry dashboard: one state model, fed by the /v1/watch event stream (see
// watch/DESIGN.md) and by /v1/cluster for members' last contact. Everything is built with
// DOM calls and textContent: nothing from the registry is ever parsed as HTML.
"use strict";

// A registry with read tokens serves this page at /?token=<read token>: the page's own
// requests carry it on (EventSource cannot send an Authorization header).
const TOKEN = new URLSearchParams(location.search).get("token");
function withToken(path) {
  return TOKEN ? path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(TOKEN) : path;
}

const MAX_ROWS = 200; // instances shown per namespace before "and N more"

const model = {
  index: 0,
  namespaces: new Map(), // name -> Map(session -> {host, node, session, since})
  cluster: null,         // from the stream: node, state, leader, term, fenced, members
  contact: new Map(),    // member id -> last_contact_ms (null: unknown) from /v1/cluster
  health: new Map(),     // member id -> the leader's probe {healthy, lag, ...} (leader only)
  polled: null,          // the last /v1/cluster answer: versions, agents, balance, pace
  fresh: new Set(),      // "ns\0session" registered since the last render, to highlight
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

// --- applying events ---------------------------------------------------------------------

function applyState(s) {
  model.index = s.index;
  model.namespaces = new Map();
  for (const ns of s.namespaces) {
    const m = new Map();
    for (const i of ns.instances) m.set(i.session, i);
    model.namespaces.set(ns.name, m);
  }
  if (s.cluster) model.cluster = s.cluster;
}

function applyChanges(ev) {
  // Changes at or below the index already held are in the state we have (DESIGN.md):
  // compare with the index held before this event, since one entry may make several changes.
  const base = model.index;
  for (const c of ev.changes) {
    if (c.index <= base) continue;
    if (c.kind === "register") {
      let m = model.namespaces.get(c.ns);
      if (!m) model.namespaces.set(c.ns, (m = new Map()));
      m.set(c.session, { host: c.host, node: c.node, session: c.session, since: c.since || null });
      model.fresh.add(c.ns + "\0" + c.session);
    } else if (c.kind === "deregister") {
      const m = model.namespaces.get(c.ns);
      if (m) {
        m.delete(c.session);
        if (m.size === 0) model.namespaces.delete(c.ns);
      }
    }
    // "node" and "node-removed" arrive with a "cluster" event that carries the new view.
  }
  model.index = Math.max(base, ev.index);
}

// --- the stream --------------------------------------------------------------------------

function setConn(state, text) {
  const c = $("conn");
  c.dataset.state = state;
  c.textContent = text;
  c.className = "pill " + (state === "live" ? "pill-live" : state === "down" ? "pill-bad" : "pill-wait");
}

function connect() {
  // EventSource reconnects by itself and sends Last-Event-ID, so the node resumes the
  // stream after the last change we saw (or sends the full state when it cannot).
  const es = new EventSource(withToken("/v1/watch"));
  es.onopen = () => setConn("live", "live");
  es.onerror = () => setConn(es.readyState === EventSource.CLOSED ? "down" : "reconnecting", es.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting…");
  es.addEventListener("state", (e) => { applyState(JSON.parse(e.data)); setConn("live", "live"); render(); });
  es.addEventListener("changes", (e) => { applyChanges(JSON.parse(e.data)); render(); });
  es.addEventListener("cluster", (e) => { model.cluster = JSON.parse(e.data).cluster; render(); });
}

async function pollCluster() {
  try {
    const r = await fetch(withToken("/v1/cluster"), { cache: "no-store" });
    if (r.ok) {
      const v = await r.json();
      model.contact = new Map((v.members || []).map((m) => [m.id, m.last_contact_ms]));
      model.health = new Map((v.members || []).filter((m) => m.health).map((m) => [m.id, m.health]));
      model.polled = v;
      if (!model.cluster) model.cluster = v;
      renderMembers();
      renderBalance();
    }
  } catch (_) { /* the stream's status pill already says the node is unreachable */ }
}

// --- rendering ---------------------------------------------------------------------------

let pending = false;
function render() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => { pending = false; renderAll(); });
}

function renderAll() {
  renderSummary();
  renderMembers();
  renderNamespaces();
  model.fresh.clear();
}

// suffrageOf is "voter", "nonvoter" or "staging" (role, or raft's word from older nodes).
function suffrageOf(m) {
  return m.role || (m.suffrage || "").toLowerCase();
}

function roleOf(m, c) {
  if (m.leader) return "leader";
  if (m.id === c.node && c.fenced) return "fenced";
  if (suffrageOf(m) !== "voter") return "non-voter";
  if (m.id === c.node) return (c.state || "").toLowerCase();
  return "follower";
}

function roleBadge(role) {
  return el("span", { class: "role role-" + role.replace(/[^a-z-]/g, "") }, role);
}

function renderSummary() {
  const c = model.cluster;
  let instances = 0;
  for (const m of model.namespaces.values()) instances += m.size;
  $("ns-count").textContent = model.namespaces.size;
  $("inst-count").textContent = instances;
  $("index").textContent = model.index || "—";
  if (!c) return;
  $("served-by").textContent = c.node || "?";
  const me = (c.members || []).find((m) => m.id === c.node);
  $("served-role").replaceWith(Object.assign(roleBadge(me ? roleOf(me, c) : (c.state || "").toLowerCase()), { id: "served-role" }));
  $("leader").textContent = c.leader || "none";
  $("term").textContent = c.term ?? "—";
  $("member-count").textContent = (c.members || []).length;
  const sec = $("peer-security");
  sec.textContent = PEER_SECURITY[c.peer_security] || c.peer_security || "—";
  // Unauthenticated peers are a warning: anyone on a trusted network (or anywhere, when
  // insecure) can join and rewrite the registry.
  sec.className = "value" + (c.peer_security === "insecure" || c.peer_security === "trusted-hosts" ? " unauthenticated" : "");
  document.title = "wsregistry · " + (c.node || "");
}

const PEER_SECURITY = {
  "mutual-tls": "mutual TLS",
  "cluster-key": "cluster key",
  "trusted-hosts": "unauthenticated (trusted networks only)",
  "insecure": "UNAUTHENTICATED (any host)",
};

function contactCell(id) {
  const ms = model.contact.get(id);
  if (ms === undefined || ms === null) return el("td", { class: "dim", title: "only the leader knows every member's last contact" }, "—");
  // The leader's probe of the member: healthy (answers and keeps up) and how far behind.
  const h = model.health && model.health.get(id);
  const attrs = h ? { "data-healthy": String(h.healthy), title: (h.healthy ? "healthy" : "failing") + ", " + h.lag + " entries behind" } : {};
  if (ms < 1000) return el("td", { ...attrs, class: "contact-ok" }, "now");
  const s = ms / 1000;
  return el("td", { ...attrs, class: s < 5 ? "contact-late" : "contact-bad" }, s < 60 ? s.toFixed(1) + " s ago" : Math.round(s / 60) + " min ago");
}

function renderMembers() {
  const c = model.cluster;
  const tbody = $("members").tBodies[0];
  if (!c) return;
  const mixed = new Set(versions().values()).size > 1;
  const rows = (c.members || []).map((m) => {
    const role = roleOf(m, c);
    const name = el("td", {}, el("strong", {}, m.id));
    if (m.id === c.node) name.append(el("span", { class: "you" }, "(this node)"));
    return el("tr", { "data-member": m.id, "data-role": role, "data-suffrage": suffrageOf(m),
      title: suffrageOf(m) === "voter" ? "voter" : "non-voter: replicates, serves agents and reads, never counts for quorum" },
      name, el("td", {}, roleBadge(role)), contactCell(m.id),
      el("td", { class: "mono" }, m.ws || "—"), el("td", { class: "mono" }, m.http || "—"),
      el("td", { class: "mono" }, m.raft || "—"), el("td", { class: "mono dim" }, m.incarnation || "—"),
      versionCell(m.id, mixed));
  });
  tbody.replaceChildren(...rows);
  $("contact-hint").textContent = c.state === "Leader" ? "" : "this node is not the leader: it knows only its own contact with the leader";
}

// versions: member id -> the build it announced (stream view first, then the poll).
function versions() {
  const out = new Map();
  for (const src of [model.polled, model.cluster]) {
    for (const m of (src && src.members) || []) if (m.version) out.set(m.id, m.version);
  }
  return out;
}

// A mixed-version cluster (an upgrade in progress) is marked on every version cell.
function versionCell(id, mixed) {
  const v = versions().get(id);
  if (!v) return el("td", { class: "dim", title: "a build before versions were announced" }, "—");
  return el("td", { class: "mono version" + (mixed ? " mixed" : ""), "data-version": v, title: mixed ? "members run different versions: an upgrade in progress" : "" }, v);
}

// The SVG namespace, taken from the page (its <svg> elements) rather than written out.
const SVG = document.getElementById("balance").namespaceURI;
function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}

// renderBalance draws agents per member against the fair share, and this node's pace.
function renderBalance() {
  const v = model.polled;
  if (!v) return;
  const members = (v.members || []).filter((m) => typeof m.agents === "number");
  const b = v.balance || {};
  const fair = typeof b.fair_share === "number" ? b.fair_share : (members.reduce((s, m) => s + m.agents, 0) / Math.max(1, members.length));
  const tol = typeof b.tolerance === "number" ? b.tolerance : 0.1;
  const rowH = 26, labelW = 90, width = 520, barW = width - labelW - 60;
  const top = Math.max(fair * (1 + tol), ...members.map((m) => m.agents), 1);
  const chart = $("balance");
  chart.setAttribute("viewBox", `0 0 ${width} ${members.length * rowH + 8}`);
  const parts = [];
  members.forEach((m, i) => {
    const y = 4 + i * rowH;
    const off = Math.abs(m.agents - fair) > Math.max(tol * fair, 1);
    parts.push(svg("text", { x: 0, y: y + 16, class: "bar-label" }, m.id));
    parts.push(svg("rect", { x: labelW, y: y + 3, width: Math.max(1, (m.agents / top) * barW), height: rowH - 8, rx: 3,
      class: "bar" + (m.draining ? " bar-draining" : off ? " bar-off" : ""), "data-member": m.id, "data-agents": m.agents }));
    parts.push(svg("text", { x: labelW + (m.agents / top) * barW + 6, y: y + 16, class: "bar-value" }, m.agents + (m.draining ? " (draining)" : "")));
  });
  const fx = labelW + (fair / top) * barW;
  parts.push(svg("line", { x1: fx, x2: fx, y1: 0, y2: members.length * rowH + 8, class: "fair", "data-fair": fair.toFixed(1) }));
  chart.replaceChildren(...parts);
  const state = b.state ? b.state + (b.reason ? ": " + b.reason : "") : "";
  $("balance-hint").textContent = `fair share ${fair.toFixed(1)} ±${Math.round(tol * 100)}%` + (state ? " · this node: " + state : "");
  const p = v.pace || {};
  for (const name of ["registrations", "lookups", "fetches"]) spark(name, p[name] || []);
}

function spark(name, series) {
  const e = $("spark-" + name);
  const now = series.length ? series[series.length - 1] : null;
  $("pace-" + name).textContent = now === null ? "—" : fmtRate(now);
  e.dataset.points = series.length;
  if (series.length < 2) { e.replaceChildren(); return; }
  const top = Math.max(...series, 1);
  const step = 240 / (series.length - 1);
  const pts = series.map((r, i) => `${(i * step).toFixed(1)},${(38 - (r / top) * 36).toFixed(1)}`).join(" ");
  e.replaceChildren(svg("polyline", { points: pts, class: "spark-line" }));
}

function fmtRate(r) {
  return r >= 1000 ? (r / 1000).toFixed(1) + "k" : r >= 10 ? Math.round(r) : r.toFixed(1);
}

function since(iso) {
  if (!iso) return ["—", ""];
  const d = new Date(iso);
  const s = Math.max(0, (Date.now() - d.getTime()) / 1000);
  const rel = s < 60 ? Math.floor(s) + " s ago" : s < 3600 ? Math.floor(s / 60) + " min ago" : s < 86400 ? Math.floor(s / 3600) + " h ago" : Math.floor(s / 86400) + " d ago";
  return [rel, d.toLocaleString()];
}

function renderNamespaces() {
  const q = $("filter").value.trim().toLowerCase();
  const names = [...model.namespaces.keys()].sort();
  const blocks = [];
  for (const name of names) {
    let insts = [...model.namespaces.get(name).values()];
    if (q && !name.toLowerCase().includes(q)) {
      insts = insts.filter((i) => i.host.toLowerCase().includes(q) || i.node.toLowerCase().includes(q));
      if (insts.length === 0) continue;
    }
    insts.sort((a, b) => (a.since || "").localeCompare(b.since || "") || a.host.localeCompare(b.host));
    const rows = insts.slice(0, MAX_ROWS).map((i) => {
      const [rel, abs] = since(i.since);
      return el("tr", { "data-ns": name, "data-host": i.host, class: model.fresh.has(name + "\0" + i.session) ? "fresh" : undefined },
        el("td", { class: "mono host" }, i.host), el("td", {}, i.node),
        el("td", { title: abs, "data-since": i.since || "" }, rel), el("td", { class: "mono dim" }, i.session));
    });
    const total = model.namespaces.get(name).size;
    const block = el("div", { class: "ns", "data-ns": name },
      el("div", { class: "ns-head" }, el("span", { class: "ns-name" }, name),
        el("span", { class: "count" }, total === 1 ? "1 instance" : total + " instances")),
      el("div", { class: "table-wrap" }, el("table", {},
        el("thead", {}, el("tr", {}, el("th", {}, "Host"), el("th", {}, "Node"), el("th", {}, "Since"), el("th", {}, "Session"))),
        el("tbody", {}, ...rows))));
    if (insts.length > MAX_ROWS) block.append(el("div", { class: "more" }, `and ${insts.length - MAX_ROWS} more: narrow the filter`));
    blocks.push(block);
  }
  $("namespaces").replaceChildren(...blocks);
  $("empty").hidden = blocks.length > 0;
  $("empty").textContent = model.namespaces.size === 0 ? "No live registrations." : "Nothing matches the filter.";
}

function tickSince() {
  for (const td of document.querySelectorAll("td[data-since]")) td.textContent = since(td.dataset.since)[0];
}

$("filter").addEventListener("input", renderNamespaces);
connect();
pollCluster();
setInterval(pollCluster, 2000);
setInterval(tickSince, 5000);
