// Boid cluster dashboard: renders the server's snapshot; live through server-sent events.
// Read only. Every text from the cluster goes through textContent (names, messages are user data).
"use strict";

const VIEWS = ["overview", "jobs", "contributors", "money", "health"];
const charts = new Map();   // key -> {wrap, chart}
let state = null;
window.boidPageId = Math.random().toString(36).slice(2);
window.boidSnapshots = 0;

// -- helpers -----------------------------------------------------------------------------------
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}
const code = (t) => h("code", {}, t);
function amount(a) { return a ? a.text : "—"; }
// integer smallest units -> decimal text, without floating point
function units(amt, precision) {
  const neg = amt < 0; let s = String(Math.abs(Math.trunc(amt)));
  if (!precision) return (neg ? "-" : "") + s;
  s = s.padStart(precision + 1, "0");
  return (neg ? "-" : "") + s.slice(0, -precision) + "." + s.slice(-precision);
}
function clock(t) { return new Date(t * 1000).toLocaleTimeString([], {hour12: false}); }
function when(iso) {
  if (!iso) return "never";
  const d = new Date(Date.parse(iso));
  return (d.toDateString() === new Date().toDateString() ? "" : d.toLocaleDateString() + " ") + d.toLocaleTimeString([], {hour12: false});
}
function duration(secs) {
  if (secs % 86400 === 0) return secs / 86400 + "d";
  if (secs % 3600 === 0) return secs / 3600 + "h";
  if (secs % 60 === 0) return secs / 60 + "m";
  return secs + "s";
}
function empty(title, ...lines) { return h("div", {class: "empty"}, h("strong", {}, title), ...lines.map(l => h("p", {}, l))); }
function conditions(list) {
  return (list || []).map(c => h("div", {class: "cond"},
    h("span", {class: c.status[0]}, c.status === "True" ? "✓" : c.status === "False" ? "✗" : "?"), " ",
    h("b", {}, c.type), " ", c.reason ? h("span", {class: "muted"}, c.reason) : null,
    c.message ? " — " + c.message : ""));
}
function tile(k, v, testid, cls) { return h("div", {class: "tile"}, h("div", {class: "v " + (cls || ""), "data-testid": testid}, v), h("div", {class: "k"}, k)); }

// A chart kept across renders: its wrapper element moves into the new DOM, data updates in place.
function chart(key, type, datasets, opts) {
  let c = charts.get(key);
  if (!window.Chart) return h("div", {class: "muted small"}, "(chart library not loaded)");
  if (!c) {
    const wrap = h("div", {class: "chart" + (opts && opts.tall ? " tall" : "")});
    const canvas = h("canvas", {"aria-label": key, role: "img"});
    wrap.append(canvas);
    const cfg = {
      type, data: {datasets},
      options: {
        animation: false, responsive: true, maintainAspectRatio: false, parsing: false, normalized: true,
        plugins: {legend: {display: datasets.length > 1, labels: {boxWidth: 12}}},
        scales: {
          x: {type: "linear", ticks: {maxTicksLimit: 5, callback: (v) => clock(v)}},
          y: {beginAtZero: true, title: {display: !!(opts && opts.ylabel), text: opts && opts.ylabel},
              ticks: {maxTicksLimit: 5, callback: (opts && opts.yfmt) || ((v) => v)}},
        },
        elements: {point: {radius: 0, hitRadius: 6}, line: {borderWidth: 2}},
        spanGaps: false,
      },
    };
    if (opts && opts.y1) cfg.options.scales.y1 = {position: "right", beginAtZero: true, grid: {drawOnChartArea: false},
      title: {display: true, text: opts.y1}, ticks: {maxTicksLimit: 5}};
    c = {wrap, chart: new Chart(canvas, cfg)};
    charts.set(key, c);
  } else {
    c.chart.data.datasets = datasets;
    c.chart.options.plugins.legend.display = datasets.length > 1;
    c.chart.update("none");
  }
  c.used = true;
  return c.wrap;
}
const PALETTE = ["#2f5bea", "#1a7f37", "#b35900", "#8e24aa", "#00838f", "#c62828"];
const pts = (list) => list.map(([x, y]) => ({x, y}));

// -- views -------------------------------------------------------------------------------------
function progressBar(j) {
  const t = j.total || 0, u = j.units || {};
  const pct = (n) => t ? (100 * n / t).toFixed(2) + "%" : "0%";
  return h("div", {class: "bar", title: `${j.validated}/${t} validated`},
    h("span", {class: "val", style: `width:${pct(j.validated)}`}),
    h("span", {class: "run", style: `width:${pct(u.running || 0)}`}),
    h("span", {class: "fail", style: `width:${pct(u.failed || 0)}`}));
}

function jobCard(j, full) {
  const u = j.units;
  const extra = ["running", "failed"].filter(k => u[k]).map(k => `${u[k]} ${k}`).join(", ");
  const card = h("div", {class: "card", "data-testid": "job-" + j.name},
    h("h3", {}, j.name, h("span", {class: "phase " + j.phase, "data-field": "phase"}, j.phase),
      h("span", {class: "muted small"}, "protocol " + j.protocol)),
    progressBar(j),
    h("div", {}, h("b", {"data-field": "progress"}, j.progress || `${j.validated}/${j.total}`), " validated · ",
      h("span", {"data-field": "units"}, `${j.done}/${j.total} units`), extra ? ` (${extra})` : ""));
  if (!full) return card;
  const last = j.rate.length ? j.rate[j.rate.length - 1][1] : null;
  card.append(h("div", {class: "small muted"}, "units validated per second",
    last !== null ? h("span", {"data-field": "rate"}, ` · latest ${last}/s`) : " · no samples yet"));
  if (j.rate.length) card.append(chart("rate-" + j.name, "line",
    [{label: "units/s", data: pts(j.rate), borderColor: PALETTE[0], backgroundColor: "rgba(47,91,234,.12)", fill: true, stepped: "after"}],
    {ylabel: "units/s"}));
  card.append(h("dl", {class: "kv"},
    h("dt", {}, "results"), h("dd", {"data-field": "output"}, j.output ? code(j.output) : (j.phase === "Failed" ? "none: the job failed" : "when the job succeeds")),
    h("dt", {}, "started"), h("dd", {}, j.startTime ? when(j.startTime) : "not yet"),
    h("dt", {}, "finished"), h("dd", {}, j.completionTime ? when(j.completionTime) : "—"),
    h("dt", {}, "image"), h("dd", {}, j.image),
    h("dt", {}, "contributors"), h("dd", {}, j.contributors.length
      ? j.contributors.map(c => `${c.account} ${c.seconds} s`).join(", ") : "none yet")));
  const probs = [];
  for (const c of j.problems) probs.push(h("div", {}, h("b", {}, `${c.type}: ${c.reason}`), c.message ? " — " + c.message : ""));
  if (j.failedUnits.length) probs.push(h("div", {}, h("b", {}, "failed units: "), j.failedUnits.join(", ")));
  for (const d of j.disagreements) probs.push(h("div", {}, h("b", {}, "outvoted: "), `unit ${d.unit} by ${d.contributor} (result ${String(d.hash).slice(0, 12)}…)`));
  if (probs.length) card.append(h("div", {class: "problems", "data-field": "problems"}, ...probs));
  return card;
}

function noJobs() {
  return empty("No jobs yet.", h("span", {}, "Submit one: ", code("boidctl apply -f manifests/examples/job.yaml"), " — it appears here and moves live."));
}

function renderOverview(s) {
  const jobs = s.jobs, by = (p) => jobs.filter(j => j.phase === p).length;
  const validated = jobs.reduce((a, j) => a + j.validated, 0), total = jobs.reduce((a, j) => a + j.total, 0);
  const paid = {};
  for (const p of s.protocols) { const t = p.paidTotal; paid[t.symbol] = paid[t.symbol] || {a: 0, p: t.precision}; paid[t.symbol].a += t.amount; }
  const paidText = Object.entries(paid).map(([sym, v]) => `${units(v.a, v.p)} ${sym}`).join(" + ") || "0";
  const hl = s.health || {};
  return [h("h2", {}, "Overview"),
    h("div", {class: "tiles"},
      tile("protocols", s.protocols.length, "n-protocols"),
      tile("jobs running", by("Running"), "n-running"),
      tile("jobs succeeded / failed", `${by("Succeeded")} / ${by("Failed")}`),
      tile("units validated", `${validated}/${total}`, "units-total"),
      tile("contributors", s.contributors.length),
      tile("paid out", paidText, "paid-total"),
      tile("leader", hl.leader ? hl.leader.split("-").slice(0, 2).join("-") : "none", "leader")),
    h("h2", {}, "Jobs"),
    jobs.length ? h("div", {class: "grid"}, jobs.map(j => jobCard(j, false))) : noJobs()];
}

function renderJobs(s) {
  return [h("h2", {}, `Jobs (${s.jobs.length})`), s.jobs.length ? h("div", {class: "grid"}, s.jobs.map(j => jobCard(j, true))) : noJobs()];
}

function renderContributors(s) {
  if (!s.contributors.length)
    return [h("h2", {}, "Contributors"), empty("No contributors yet.", h("span", {}, "Register volunteers: ", code("boidctl apply -f manifests/examples/contributors.yaml")))];
  const cards = s.contributors.map(c => h("div", {class: "card", "data-testid": "contributor-" + c.account},
    h("h3", {}, c.account, h("span", {class: "phase"}, c.role), c.name ? null : h("span", {class: "muted small"}, "(no Contributor object)")),
    h("dl", {class: "kv"},
      h("dt", {}, "time given"), h("dd", {"data-field": "total"}, c.total + " s" + (c.timeSource === "chain" ? "" : " (last status)")),
      h("dt", {}, "in jobs' status"), h("dd", {}, c.jobs + " s"),
      h("dt", {}, "researchers"), h("dd", {}, c.researchers.join(", ") || "—")),
    c.perProtocol.map(r => h("div", {class: "sub", "data-testid": `money-${r.protocol}-${c.account}`},
      h("div", {class: "subhead"}, "protocol ", h("b", {}, r.protocol), h("span", {class: "muted small"}, " " + r.chainName),
        r.registered === false ? h("span", {class: "muted small"}, " · not registered") : null),
      h("dl", {class: "kv"},
        h("dt", {}, "time given"), h("dd", {}, h("span", {"data-field": "time"}, r.time ?? "?"), " s"),
        h("dt", {}, "owed"), h("dd", {"data-field": "owed"}, amount(r.owed)),
        h("dt", {}, "paid"), h("dd", {"data-field": "paid"}, amount(r.paid))))),
    conditions(c.conditions)));
  return [h("h2", {}, `Contributors (${s.contributors.length})`), chainNote(s), h("div", {class: "grid"}, cards)];
}

function chainNote(s) {
  if (!s.chain || !s.chain.error) return null;
  return h("div", {class: "banner", "data-testid": "chain-error"}, h("strong", {}, "The chain could not be read" + (s.chain.url ? ` at ${s.chain.url}` : "") + ": " + s.chain.error),
    "Time and owed amounts need the chain; escrow and paid amounts are the operator's last reading. Start a local node with ", code("boidctl chain up"), " or pass ", code("--chain-url"), ".");
}

function escrowBlock(p) {
  const e = p.escrow;
  if (!e) return h("div", {class: "muted small", "data-field": "unfunded"},
    p.registered === false ? h("span", {}, `${p.chainName} is not on the registry: `, code(`boidctl fund ${p.name} AMOUNT`), " registers and funds it with the owner's key.")
      : "no escrow read yet");
  const free = e.free && e.free.amount < 0
    ? h("dd", {class: "bad", "data-field": "free"}, amount(e.free))
    : h("dd", {"data-field": "free"}, amount(e.free));
  const books = e.balances === null ? h("div", {class: "muted small"}, "as last read by the operator")
    : e.balances ? h("div", {class: "small ok", "data-field": "books"}, "✓ deposited = paid + owed + withdrawn + free, exactly")
    : h("div", {class: "problems", "data-field": "books"}, ...e.differences.map(d => h("div", {}, d)));
  return h("div", {},
    h("dl", {class: "kv"},
      h("dt", {}, "escrow balance"), h("dd", {"data-field": "balance"}, amount(e.balance)),
      h("dt", {}, "deposited"), h("dd", {"data-field": "deposited"}, amount(e.deposited)),
      h("dt", {}, "paid"), h("dd", {"data-field": "paidTotal"}, amount(e.paid)),
      h("dt", {}, "owed"), h("dd", {"data-field": "owed"}, amount(e.owed)),
      h("dt", {}, "withdrawn"), h("dd", {"data-field": "withdrawn"}, amount(e.withdrawn)),
      h("dt", {}, e.shortfall ? "shortfall" : "free escrow"), free,
      h("dt", {}, "reserved for running jobs"), h("dd", {"data-field": "reserved"}, amount(e.reserved)),
      h("dt", {}, "the owner may withdraw"), h("dd", {"data-field": "withdrawable"}, amount(e.withdrawable)),
      h("dt", {}, "running jobs can still owe"), h("dd", {"data-field": "canStillOwe"}, p.canStillOwe ? p.canStillOwe.text : "no bound (a job has no unitTimeout)")),
    books,
    e.holding ? h("div", {class: "small muted", "data-field": "holding"},
      `${e.holding.registry} holds ${e.holding.held.text}` + (e.holding.balanced ? ": every escrow in this token" : ` but its escrows add up to ${e.holding.escrows.text}`)) : null);
}

function renderMoney(s) {
  const out = [h("h2", {}, "Money"), chainNote(s)];
  if (!s.protocols.length) {
    out.push(empty("No protocols yet.", h("span", {}, "A protocol pays contributors from its escrow: ", code("boidctl apply -f manifests/examples/protocol.yaml"), " then ", code("boidctl fund PROTOCOL AMOUNT"))));
    return out;
  }
  // each series runs on to now at its last total, so the step chart shows the current level
  const series = s.payouts.map((p, i) => ({label: `${p.protocol} (${p.symbol})`, stepped: true,
    data: pts(p.points.length ? [...p.points, [Math.max(s.generatedAt, p.points[p.points.length - 1][0]), p.points[p.points.length - 1][1]]] : []),
    borderColor: PALETTE[i % PALETTE.length], backgroundColor: "transparent"}));
  const prec = s.payouts.length ? s.payouts[0].precision : 0;
  out.push(h("div", {class: "card"}, h("h3", {}, "Paid out over time"),
    s.payouts.some(p => p.points.length) ? null : h("div", {class: "muted small"}, "No payouts yet: they run at each protocol's payout interval once time is recorded on chain."),
    chart("payouts", "line", series, {tall: true, yfmt: (v) => units(v, prec)})));
  const byProto = {};
  for (const c of s.contributors) for (const r of c.perProtocol)
    if (r.source === "chain" ? (r.registered || r.owed.amount || r.paid.amount) : r.paid.amount)
      (byProto[r.protocol] = byProto[r.protocol] || []).push([c.account, r]);
  out.push(h("div", {class: "grid wide", style: "margin-top:12px"}, s.protocols.map(p => {
    const rows = byProto[p.name] || [];
    const cr = p.chainRates;
    return h("div", {class: "card", "data-testid": "protocol-" + p.name},
      h("h3", {}, p.name, h("span", {class: "muted small"}, p.title)),
      h("dl", {class: "kv"},
        h("dt", {}, "on chain"), h("dd", {}, p.chainName + (p.id !== null ? ` (id ${p.id})` : "") + (p.accepted === false ? ", not yet accepted by the researcher" : "")),
        h("dt", {}, "owner / researcher"), h("dd", {}, `${p.owner} / ${p.researcher}`),
        h("dt", {}, "budget pledged"), h("dd", {}, amount(p.pledged)),
        h("dt", {}, "rates per hour"), h("dd", {"data-field": "rates"}, `worker ${amount(cr ? cr.worker : p.rates.worker)}, dispatcher ${amount(cr ? cr.dispatcher : p.rates.dispatcher)}`
          + (cr && (cr.worker.text !== p.rates.worker.text || cr.dispatcher.text !== p.rates.dispatcher.text) ? ` (spec: worker ${p.rates.worker.text}, dispatcher ${p.rates.dispatcher.text})` : "")),
        h("dt", {}, "recorded"), h("dd", {}, p.batches ? `${p.batches.units} unit(s) in ${p.batches.seq} batch(es)` : "—"),
        h("dt", {}, "payouts"), h("dd", {}, `every ${duration(p.payout.intervalSeconds)}` + (p.payout.minimum ? `, at least ${p.payout.minimum.text}` : "") + `; last ${when(p.payout.last)}`),
        h("dt", {}, "jobs"), h("dd", {}, p.jobs.join(", ") || "none")),
      h("h4", {}, "Escrow"),
      escrowBlock(p),
      rows.length ? h("div", {class: "tablewrap"}, h("table", {},
        h("thead", {}, h("tr", {}, h("th", {}, "contributor"), h("th", {class: "num"}, "time s"), h("th", {class: "num"}, "owed"), h("th", {class: "num"}, "paid"))),
        h("tbody", {}, rows.map(([acct, r]) => h("tr", {"data-testid": `paid-${p.name}-${acct}`},
          h("td", {}, acct + (r.role === "dispatcher" ? " (dispatcher)" : "")), h("td", {class: "num", "data-field": "time"}, r.time ?? "?"),
          h("td", {class: "num", "data-field": "owed"}, amount(r.owed)), h("td", {class: "num", "data-field": "paid"}, amount(r.paid))))))) : h("div", {class: "muted small"}, "no contributor time recorded yet"),
      conditions(p.conditions));
  })));
  return out;
}

function renderHealth(s) {
  const hl = s.health || {}, m = hl.metrics;
  const out = [h("h2", {}, "Operator health"), h("div", {class: "tiles"},
    tile("ZooKeeper", hl.connected ? "connected" : "down", "zk-state"),
    tile("leader", hl.leader || "none", "leader-full", "id"),
    tile("replicas", (hl.contenders || []).length),
    tile("queue depth", m && !m.error && m.queue_depth !== null ? m.queue_depth : "—", "queue-depth"),
    tile("reconciles (ok / error)", m && !m.error ? `${m.reconciles.ok || 0} / ${m.reconciles.error || 0}` : "—"))];
  if (!hl.leader) out.push(empty("No operator is leading.", h("span", {}, "Start one: ", code("boidctl operator run"), " (or ", code("boidctl up"), " for the embedded cluster).")));
  if (!m) out.push(empty("No operator metrics.", h("span", {}, "Run the operator with ", code("--health-port"), " and pass ", code("--metrics-url http://HOST:PORT/metrics"), ", or serve the dashboard from the operator with ", code("operator run --dashboard-port"), ".")));
  else if (m.error) out.push(h("div", {class: "banner bad"}, h("strong", {}, `Cannot read metrics from ${m.source}: ${m.error}`), "Is the operator running with ", code("--health-port"), "?"));
  else {
    out.push(h("div", {class: "card"}, h("h3", {}, "Queue depth and reconcile latency"),
      chart("health", "line", [
        {label: "queue depth", data: (hl.history || []).map(([t, q]) => ({x: t, y: q})), borderColor: PALETTE[0], yAxisID: "y"},
        {label: "reconcile latency ms (mean over each interval)", data: (hl.history || []).map(([t, , l]) => ({x: t, y: l})), borderColor: PALETTE[2], yAxisID: "y1"}],
      {tall: true, ylabel: "queue depth", y1: "ms"})));
    out.push(h("div", {class: "card", style: "margin-top:12px"}, h("h3", {}, "Reconcile latency by kind"), h("div", {class: "tablewrap"}, h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "kind"), h("th", {class: "num"}, "reconciles"), h("th", {class: "num"}, "mean"), h("th", {class: "num"}, "p95 ≤"))),
      h("tbody", {}, m.latency.map(k => h("tr", {"data-testid": "latency-" + k.kind}, h("td", {}, k.kind), h("td", {class: "num"}, k.count),
        h("td", {class: "num"}, (k.mean_s * 1000).toFixed(1) + " ms"), h("td", {class: "num"}, k.p95_le_s === null ? "—" : (k.p95_le_s * 1000) + " ms"))))))));
    if (m.errors.length) out.push(h("div", {class: "card", style: "margin-top:12px"}, h("h3", {}, "Reconcile errors"), h("table", {},
      h("tbody", {}, m.errors.map(e => h("tr", {}, h("td", {}, e.kind), h("td", {}, e.reason), h("td", {class: "num"}, e.count)))))));
  }
  return out;
}

// -- frame ----------------------------------------------------------------------------------------
function banner(s) {
  const b = document.getElementById("banner");
  const e = s && s.cluster && s.cluster.error;
  if (!e) { b.hidden = true; b.replaceChildren(); return; }
  b.hidden = false;
  b.className = "banner bad";
  const parts = [h("strong", {}, e.message)];
  if (e.hint) parts.push(h("span", {}, ...e.hint.split("`").map((t, i) => i % 2 ? code(t) : t)));
  if (e.retryIn) parts.push(h("span", {class: "muted"}, ` Retrying every ${e.retryIn}s.`));
  b.replaceChildren(...parts);
}

let lastRendered = null;
const VIEW_DATA = {
  overview: (s) => [s.jobs, s.protocols, s.contributors, s.health && s.health.leader],
  jobs: (s) => s.jobs,
  contributors: (s) => [s.contributors, s.chain],
  money: (s) => [s.protocols, s.payouts, s.chain],
  health: (s) => s.health,
};

function view() { const v = (location.hash || "#overview").slice(1); return VIEWS.includes(v) ? v : "overview"; }

function render() {
  const v = view();
  for (const name of VIEWS) document.getElementById("view-" + name).hidden = name !== v;
  document.querySelectorAll("nav a").forEach(a => a.classList.toggle("active", a.dataset.view === v));
  const s = state;
  banner(s);
  const conn = document.getElementById("conn");
  if (!s) return;
  const c = s.cluster || {};
  conn.textContent = c.connected ? "live" : (c.synced ? "ZooKeeper down" : "no cluster");
  conn.className = "pill " + (c.connected ? "ok" : "bad");
  document.getElementById("updated").textContent = "updated " + clock(s.generatedAt);
  const sec = document.getElementById("view-" + v);
  if (!c.synced && !c.connected) {
    sec.replaceChildren(empty("No cluster data yet.", "The dashboard shows the cluster as soon as it reaches ZooKeeper (see above)."));
    lastRendered = null;
    return;
  }
  // re-render only when what this view shows changed (keeps selections; charts update in place)
  const key = v + JSON.stringify(VIEW_DATA[v](s));
  if (key === lastRendered) return;
  lastRendered = key;
  for (const ch of charts.values()) ch.used = false;
  const fn = {overview: renderOverview, jobs: renderJobs, contributors: renderContributors, money: renderMoney, health: renderHealth}[v];
  sec.replaceChildren(...fn(s).filter(Boolean));
  // a chart kept while its view was hidden keeps the size it had then (Chart.js ignores a hidden
  // box); size it to its box now, before the first frame, not a frame later (a phone turned or a
  // window narrowed meanwhile would otherwise show the page wider than the screen)
  for (const ch of charts.values()) if (ch.used) ch.chart.resize();
  for (const [k, ch] of charts) if (!ch.used && !document.body.contains(ch.wrap)) { ch.chart.destroy(); charts.delete(k); }
}

function connect() {
  const es = new EventSource("/api/events");
  es.addEventListener("snapshot", (ev) => {
    state = window.boidState = JSON.parse(ev.data);
    window.boidSnapshots += 1;
    render();
  });
  es.onerror = () => {
    const conn = document.getElementById("conn");
    conn.textContent = "dashboard unreachable, retrying…";
    conn.className = "pill warn";
  };
}

window.addEventListener("hashchange", render);
document.addEventListener("DOMContentLoaded", () => { render(); connect(); });
