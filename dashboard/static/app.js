// The dashboard page: fetch the snapshot (/api/state), draw it, redraw when the event stream
// (/api/events) says the journal moved. One fetch in flight at a time; a burst of events is one redraw.
"use strict";
window.__scripts = performance.now();   // plotly.js and this file loaded (bench/dashboard.py reads these marks)

const TOKEN = new URLSearchParams(location.search).get("token") || "";
const Q = TOKEN ? "?token=" + encodeURIComponent(TOKEN) : "";
const CLASSES = [  // trial dots: class from the server -> legend name, colour variable, marker
  ["kept", "kept (promoted / baseline)", "--kept", "circle"],
  ["discarded", "discarded / reverted", "--discarded", "circle"],
  ["pending", "pending / promising", "--pending", "circle"],
  ["crash", "crash / invalid (no value)", "--crash", "x"],
  ["aborted", "aborted", "--dim", "circle-open"],
];
const REFRESH_IDLE_MS = 15000;   // redraw this often with no event (clocks, "last seen")
const SVG_DOTS = 2000;           // above this many trials a track's dots are drawn with WebGL (scattergl)
const LOG_LINES = 60;

let snap = null, trackIdx = 0, inflight = false, dirty = false, shown = -1;
let drawn = {};                  // section -> the revision on screen (the server counts rebuilds)
let sortKey = "time", sortDir = -1;  // newest first
const MAX_ROWS = 300;            // hypotheses rows drawn at once (the filter finds the others)
const open = new Set();          // hypothesis rows opened
const details = {};              // hypothesis id -> detail (refetched when its status changes)

const $ = (id) => document.getElementById(id);
const css = (v) => getComputedStyle(document.documentElement).getPropertyValue(v).trim();
const esc = (s) => String(s == null ? "" : s).replace(/[&<>"']/g,
  (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const num = (x, d = 4, signed = false) => x == null ? "–" : (signed && x > 0 ? "+" : "") + Number(x).toFixed(d);
const iso = (t) => new Date(t * 1000).toISOString();
const clock = (t) => t ? new Date(t * 1000).toISOString().slice(5, 16).replace("T", " ") : "–";
function dur(s) {
  if (s == null) return "–";
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h}h ${String(m).padStart(2, "0")}m` : m ? `${m}m ${String(s % 60).padStart(2, "0")}s` : `${s}s`;
}
const ago = (t) => t && snap ? dur(snap.now - t) + " ago" : "–";

// -- fetching ------------------------------------------------------------------------------
function refresh() {
  if (inflight) { dirty = true; return; }
  inflight = true;
  // sections this page holds already come back as null: only what moved crosses the wire
  const have = snap && !snap.empty ? Object.entries(snap.revs).map(([k, v]) => k + "." + v).join(",") : "";
  const url = "api/state" + Q + (have ? (Q ? "&" : "?") + "have=" + encodeURIComponent(have) : "");
  fetch(url, {cache: "no-store"}).then((r) => r.json()).then((s) => {
    if (!window.__fetched) window.__fetched = performance.now();
    if (snap && !snap.empty && s.boot === snap.boot) keep(s, snap);
    snap = s; shown = s.version; render();
  }).catch((e) => banner("cannot reach the dashboard server: " + e)).finally(() => {
    inflight = false;
    if (dirty) { dirty = false; refresh(); }
  });
}

function keep(s, old) {   // fill the sections the server left out (null) from the previous snapshot
  const tracks = Object.fromEntries(old.tracks.map((t) => [t.name, t]));
  s.tracks = s.track_names.map((n, i) => s.tracks[i] || tracks[n]);
  for (const k of ["hypotheses", "promotions", "notes", "usage"]) if (s[k] == null) s[k] = old[k];
}

function listen() {
  const es = new EventSource("api/events" + Q);
  es.onopen = () => $("live").classList.add("on");
  es.onerror = () => $("live").classList.remove("on");
  es.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.events && m.events.length) log(m.events.map((x) => x.line));
    if (m.version !== shown) refresh();
  };
}

function banner(text) {
  const b = $("banner");
  b.hidden = !text;
  b.textContent = text || "";
}

function log(lines) {
  const el = $("log");
  const all = (el.textContent ? el.textContent.split("\n") : []).concat(lines).slice(-LOG_LINES);
  el.textContent = all.join("\n");
  el.scrollTop = el.scrollHeight;
}

// -- drawing ---------------------------------------------------------------------------------
function render() {
  const s = snap;
  document.body.dataset.version = s.version;
  banner(s.error ? "journal unreachable: " + s.error + " (retrying)" : "");
  $("empty").hidden = !s.empty;
  for (const el of document.querySelectorAll("main > section:not(#empty), #tabs")) el.hidden = s.empty;
  if (s.empty) {   // before the start-up replay is done, say so rather than "no campaign yet"
    $("empty").querySelector("h2").textContent = s.ready ? "no campaign yet" : "reading the journal…";
    $("campaign").textContent = "–";
    $("status").textContent = s.ready ? "waiting" : "loading";
    document.body.dataset.rendered = "empty";
    return;
  }
  $("campaign").textContent = s.campaign;
  const st = $("status");
  st.textContent = s.running ? "running" : "stopped" + (s.stop_reason ? ": " + s.stop_reason : "");
  st.className = "pill " + (s.running ? "running" : "stopped");
  $("stop").hidden = !(s.can_stop && s.running);
  if (!$("log").textContent && s.recent.length) log(s.recent);
  trackIdx = Math.min(trackIdx, Math.max(0, s.tracks.length - 1));
  const tr = s.tracks[trackIdx];
  $("dl-tsv").href = "download/results.tsv" + Q + (tr ? (Q ? "&" : "?") + "track=" + encodeURIComponent(tr.name) : "");
  $("dl-md").href = "download/journal.md" + Q;
  if (drawn.boot !== s.boot) drawn = {boot: s.boot};
  cards(s); tabs(s); workers(s);
  const once = (key, rev, draw) => { if (drawn[key] !== rev) { draw(); drawn[key] = rev; } };
  once("chart", tr ? tr.name + ":" + s.revs["track:" + tr.name] : "", () => chart(tr));
  once("hypotheses", s.revs.hypotheses, () => hypotheses(s));
  once("promotions", s.revs.promotions, () => promotions(s));
  once("notes", s.revs.notes, () => notes(s));
  once("usage", s.revs.usage, () => usage(s));
  document.body.dataset.rendered = "campaign";
  if (!window.__firstPaint) window.__firstPaint = performance.now();   // bench/dashboard.py reads it
}

function cards(s) {
  const h = s.header;
  const items = [
    ["elapsed", dur(h.elapsed_s), s.started ? "since " + clock(s.started) + " UTC" : ""],
    ["trials", h.trials, h.running + " running · " + h.crashes + " crashed"],
    ["promotions", h.promotions, h.reverts + " reverted"],
    ["best held-out bpb", num(h.best_heldout), "test split, once per promotion"],
    ["accelerator-hours", num(h.accel_h, 2), ""],
    ["agent", "$" + num(h.usd, 2), (h.tokens || 0).toLocaleString() + " tokens"],
    ["held-out gain / accel-h", num(h.heldout_gain_per_h, 4), "bpb per accelerator-hour"],
  ];
  $("cards").innerHTML = items.map(([k, v, sub]) =>
    `<div class="card"><div class="k">${esc(k)}</div><div class="v">${esc(v)}</div><div class="s">${esc(sub)}</div></div>`).join("");
}

function tabs(s) {
  const nav = $("tabs");
  nav.hidden = s.tracks.length < 2;
  nav.innerHTML = s.tracks.map((t, i) =>
    `<button class="tab${i === trackIdx ? " on" : ""}" data-i="${i}">${esc(t.name)}</button>`).join("");
  for (const b of nav.querySelectorAll(".tab")) b.onclick = () => { trackIdx = +b.dataset.i; render(); };
}

function chart(tr) {
  const el = $("chart"), nz = $("noise");
  if (!tr) { Plotly.purge(el); el.textContent = "no trials yet"; return; }
  $("track-sub").textContent = `${tr.name} · mainline ${tr.head} · val_bpb ${num(tr.level)} · ` +
    `σ ${num(tr.sigma)} (dof ${tr.dof}) · held-out ${num(tr.heldout_now)}`;
  const end = iso(Math.max(snap.last_time || 0, ...tr.mainline.map((m) => m.t)));
  const ml = tr.mainline, d = tr.dots;
  const mx = ml.map((m) => iso(m.t)).concat(ml.length ? [end] : []);
  const last = (k) => ml.map((m) => m[k]).concat(ml.length ? [ml[ml.length - 1][k]] : []);
  const mlText = ml.map((m) => `${esc(m.label)}<br>commit ${m.commit} · mean of ${m.n}`).concat(ml.length ? [""] : []);
  const traces = [
    {x: mx, y: last("lo"), mode: "lines", line: {width: 0, shape: "hv"}, hoverinfo: "skip", showlegend: false, name: "band-lo"},
    {x: mx, y: last("hi"), mode: "lines", line: {width: 0, shape: "hv"}, fill: "tonexty",
      fillcolor: "rgba(139,150,165,0.22)", hoverinfo: "skip", name: "mainline 95% band"},
    {x: mx, y: last("v"), mode: "lines", line: {color: css("--mainline"), width: 2, shape: "hv"}, name: "mainline",
      text: mlText, hovertemplate: "mainline %{y:.4f}<br>%{text}<extra></extra>"},
  ];
  if (tr.heldout.length) {
    traces.push({x: tr.heldout.map((h) => iso(h.t)).concat([end]), y: tr.heldout.map((h) => h.v).concat([tr.heldout[tr.heldout.length - 1].v]),
      mode: "lines", line: {color: css("--heldout"), width: 1.5, dash: "dash", shape: "hv"}, name: "held-out test_bpb",
      hovertemplate: "held-out test_bpb %{y:.4f}<extra></extra>"});
  }
  const type = d.id.length > SVG_DOTS ? "scattergl" : "scatter";   // SVG: one DOM node per dot
  const vals = d.v.filter((v) => v != null);
  const top = vals.length ? Math.max(...vals) : 0;
  for (const [cls, name, colour, symbol] of CLASSES) {
    const idx = d.cls.map((c, i) => c === cls ? i : -1).filter((i) => i >= 0);
    if (!idx.length) continue;
    traces.push({x: idx.map((i) => iso(d.t[i])), y: idx.map((i) => d.v[i] == null ? top : d.v[i]),
      mode: "markers", type, name, marker: {color: css(colour), symbol, size: symbol === "x" ? 9 : 7,
        line: {width: symbol === "circle-open" ? 1.5 : 0}},
      customdata: idx.map((i) => [esc(d.labels[d.label[i]]), d.commit[i], d.seed[i], d.v[i] == null ? "no value" : d.v[i].toFixed(4),
        d.worker[i] || "?", d.kind[i]]),
      hovertemplate: "%{customdata[0]}<br>%{customdata[5]} · commit %{customdata[1]} · seed %{customdata[2]}" +
        "<br>val_bpb %{customdata[3]} · %{customdata[4]}<extra></extra>"});
  }
  const annotations = tr.marks.map((m) => {
    const lvl = levelAt(ml, m.t);
    return {x: iso(m.t), y: lvl, text: (m.action === "promoted" ? "▲ promoted " : "↩ reverted ") + m.commit,
      hovertext: esc(m.title + (m.reason ? " · " + m.reason : "")), showarrow: true, arrowhead: 0, ax: 0, ay: -34,
      font: {size: 10, color: m.action === "promoted" ? css("--kept") : css("--discarded")}, arrowcolor: css("--dim")};
  });
  const axis = {gridcolor: css("--line"), zerolinecolor: css("--line"), linecolor: css("--line")};
  Plotly.react(el, traces, {
    uirevision: tr.name, paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
    font: {color: css("--text"), size: 11}, margin: {l: 52, r: 12, t: 8, b: 30}, hovermode: "closest",
    xaxis: {...axis, type: "date"}, yaxis: {...axis, title: {text: "val_bpb" + (snap.direction === "minimize" ? " (lower is better)" : "")}},
    legend: {orientation: "h", y: innerWidth < 600 ? -0.25 : -0.12, font: {size: 10}}, annotations,
  }, {displayModeBar: false, responsive: true});
  el.dataset.points = d.id.length;      // what was drawn (bench/dashboard.py watches it)
  Plotly.react(nz, [{x: tr.noise.map((p) => iso(p.t)), y: tr.noise.map((p) => p.sigma), customdata: tr.noise.map((p) => p.dof),
    mode: "lines", line: {color: css("--accent"), width: 1.5, shape: "hv"}, name: "σ",
    hovertemplate: "σ %{y:.5f} bpb · dof %{customdata}<extra></extra>"}], {
    uirevision: tr.name, paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)", showlegend: false,
    font: {color: css("--text"), size: 10}, margin: {l: 52, r: 12, t: 4, b: 32},
    xaxis: {...axis, type: "date"}, yaxis: {...axis, title: {text: "σ bpb"}},
  }, {displayModeBar: false, responsive: true});
}

function levelAt(ml, t) {
  let v = ml.length ? ml[0].v : null;
  for (const m of ml) if (m.t <= t) v = m.v;
  return v;
}

function spark(curve) {
  if (curve.length < 2) return "";
  const ts = curve.map((p) => p[0]), ls = curve.map((p) => p[2]);
  const t0 = Math.min(...ts), t1 = Math.max(...ts), l0 = Math.min(...ls), l1 = Math.max(...ls);
  const pts = curve.map((p) => `${(100 * (p[0] - t0) / ((t1 - t0) || 1)).toFixed(1)},` +
    `${(34 - 32 * (p[2] - l0) / ((l1 - l0) || 1)).toFixed(1)}`).join(" ");
  return `<svg class="spark" viewBox="0 0 100 36" preserveAspectRatio="none"><polyline points="${pts}" ` +
    `vector-effect="non-scaling-stroke"/></svg>`;
}

function workers(s) {
  const busy = s.workers.filter((w) => w.state === "busy").length;
  const lost = s.workers.filter((w) => w.state === "lost").length;
  $("workers-sub").textContent = `${s.workers.length} workers · ${busy} busy · ${lost} lost`;
  $("workers").innerHTML = s.workers.map((w) => {
    const t = w.trial;
    let body;
    if (t) {
      const pct = t.progress == null ? 0 : Math.round(100 * t.progress);
      const left = t.seconds_left != null ? dur(t.seconds_left) + " left" : "";
      body = `<div class="what" title="${esc(t.label)}">${esc(t.kind)} · ${esc(t.label)} · seed ${esc(t.seed)}</div>
        <div class="bar"><div class="bar-fill" data-progress="${pct}" style="width:${pct}%"></div></div>
        <div class="row hw"><span>step ${esc(t.step ?? "–")} · ${pct}%</span><span>${esc(left)}</span>
        <span>loss ${num(t.loss, 3)}</span></div>${spark(w.curve)}`;
    } else if (w.state === "lost") {
      body = `<div class="what">lost: ${esc(w.reason || "no reason given")}</div>`;
    } else {
      body = `<div class="what">idle</div>`;
    }
    return `<div class="worker ${esc(w.state)}" data-worker="${esc(w.name)}">
      <div class="row"><span class="name">${esc(w.name)}</span><span class="pill ${esc(w.state)}">${esc(w.state)}</span></div>
      <div class="row hw"><span>${esc(w.hardware || "?")}</span><span>${w.trials} trials · ${w.crashes} crashes · seen ${ago(w.last_seen)}</span></div>
      ${body}</div>`;
  }).join("") || `<div class="dim">no worker has joined yet</div>`;
}

function hypotheses(s) {
  const sel = $("status-filter");
  const statuses = [...new Set(s.hypotheses.map((h) => h.status.split(",")[0]))].sort();
  const want = sel.value;
  sel.innerHTML = `<option value="">any status</option>` + statuses.map((x) =>
    `<option${x === want ? " selected" : ""}>${esc(x)}</option>`).join("");
  const q = $("filter").value.toLowerCase();
  const rows = s.hypotheses.filter((h) => (!want || h.status.split(",")[0] === want) &&
    (!q || (h.title + " " + h.agent + " " + h.status + " " + h.track).toLowerCase().includes(q)));
  rows.sort((a, b) => {
    const x = a[sortKey], y = b[sortKey];
    if (x == null && y == null) return 0;
    if (x == null) return 1;
    if (y == null) return -1;
    return (x < y ? -1 : x > y ? 1 : 0) * sortDir;
  });
  for (const th of document.querySelectorAll("#hyps th")) {
    th.className = (th.classList.contains("num") ? "num " : "") + (th.dataset.key === sortKey ? (sortDir > 0 ? "asc" : "desc") : "");
  }
  const html = [];
  for (const h of rows.slice(0, MAX_ROWS)) {
    const ci = h.lo != null ? ` <span class="dim">[${num(h.lo, 4, true)}, ${num(h.hi, 4, true)}]</span>` : "";
    const word = h.status.split(",").pop().trim().split(" ")[0];
    html.push(`<tr class="row" data-id="${esc(h.id)}"><td>${esc(h.title)}</td><td>${esc(h.agent)}</td>
      <td class="status ${esc(word)}">${esc(h.status)}</td><td class="num">${num(h.effect, 4, true)}${ci}</td>
      <td class="num">${h.sigma == null ? "–" : num(h.sigma, 1, true)}</td><td class="num">${num(h.p, 4)}</td>
      <td class="num">${h.trials}</td></tr>`);
    if (open.has(h.id)) html.push(`<tr class="detail" data-for="${esc(h.id)}"><td colspan="7">${detail(h)}</td></tr>`);
  }
  if (rows.length > MAX_ROWS) {
    html.push(`<tr><td colspan="7" class="dim">showing ${MAX_ROWS} of ${rows.length.toLocaleString()}: ` +
      `filter or sort to see the others</td></tr>`);
  }
  $("hyps").tBodies[0].innerHTML = html.join("") || `<tr><td colspan="7" class="dim">no hypotheses yet</td></tr>`;
  for (const tr of document.querySelectorAll("#hyps tr.row")) tr.onclick = () => toggle(tr.dataset.id);
}

function detail(h) {
  const d = details[h.id];
  if (!d || d.status !== h.status) { fetchDetail(h.id); return d ? detailHtml(d) : `<span class="dim">loading…</span>`; }
  return detailHtml(d);
}

function detailHtml(d) {
  let out = `<p>${esc(d.rationale || "")}</p><p class="dim">expected ${esc(d.expected || "–")} · risk ${esc(d.risk || "–")} · ${esc(d.agent || "")} on ${esc(d.track || "")}</p>`;
  if (!d.candidates.length) out += `<p class="dim">not implemented yet</p>`;
  for (const c of d.candidates) {
    const vals = c.trials.map((t) => `${t.kind} seed ${t.seed}: ${t.value != null ? t.value.toFixed(4) : t.status + (t.crash ? " (" + t.crash + ")" : "")}`);
    out += `<p><b>candidate ${esc(c.id)}</b> <span class="dim">commit ${esc(c.commit)} on ${esc(c.base)}${c.implementer ? " · built by " + esc(c.implementer) : ""}</span></p>
      <p>${esc(c.verdict)}</p><div class="trial-values">${vals.map(esc).join("<br>") || "no trials yet"}</div>`;
    out += c.diff_html ? `<pre class="diff">${c.diff_html}</pre><div class="dim">diff from the ${esc(c.diff_source)}</div>`
      : `<p class="dim">diff unavailable: the journal holds none and the repository does not have these commits</p>`;
  }
  return out;
}

function fetchDetail(id) {
  fetch("api/hypothesis/" + encodeURIComponent(id) + Q).then((r) => r.json()).then((d) => {
    details[id] = d;
    const row = document.querySelector(`#hyps tr.detail[data-for="${CSS.escape(id)}"] td`);
    if (row) row.innerHTML = detailHtml(d);
  });
}

function toggle(id) {
  if (open.has(id)) open.delete(id); else open.add(id);
  hypotheses(snap);
}

function promotions(s) {
  $("promos").tBodies[0].innerHTML = s.promotions.map((p) => `<tr><td>${clock(p.t)}</td><td class="sub">${esc(p.track)}</td>
    <td class="sub">${esc(p.commit)}</td><td class="num">${num(p.gain, 4)}</td><td class="num">${num(p.accel_h, 2)}</td>
    <td class="num">${num(p.gain_per_h, 4)}</td><td class="num">${(p.tokens || 0).toLocaleString()}</td>
    <td class="num">${num(p.usd, 2)}</td><td class="num">${num(p.test)}</td></tr>`).join("") ||
    `<tr><td colspan="9" class="dim">no promotion yet</td></tr>`;
}

function notes(s) {
  $("notes").innerHTML = s.notes.slice().reverse().map((n) => `<div class="note"><div class="meta">${clock(n.t)} UTC · ${esc(n.author)}</div>
    <b>${esc(n.title)}</b><div class="text">${esc(n.text)}</div></div>`).join("") || `<div class="dim">no lab note yet</div>`;
}

function usage(s) {
  $("usage").tBodies[0].innerHTML = s.usage.map((u) => `<tr><td>${esc(u.agent)}</td><td>${esc(u.model)}</td>
    <td class="num">${u.calls}</td><td class="num">${u.input.toLocaleString()}</td><td class="num">${u.output.toLocaleString()}</td>
    <td class="num">${u.cache_read.toLocaleString()}</td><td class="num">${num(u.usd, 4)}</td><td class="num">${num(u.latency, 1)}</td></tr>`).join("") ||
    `<tr><td colspan="8" class="dim">no agent calls recorded</td></tr>`;
}

// -- wiring ----------------------------------------------------------------------------------
for (const th of document.querySelectorAll("#hyps th")) {
  th.onclick = () => { sortDir = sortKey === th.dataset.key ? -sortDir : 1; sortKey = th.dataset.key; hypotheses(snap); };
}
$("filter").oninput = () => snap && !snap.empty && hypotheses(snap);
$("status-filter").onchange = () => snap && !snap.empty && hypotheses(snap);
$("stop").onclick = () => {
  if (!confirm("Stop campaign " + snap.campaign + "? Running trials are aborted (re-run on resume).")) return;
  fetch("api/stop" + Q, {method: "POST"}).then((r) => r.json()).then((m) => banner(m.message || m.error));
};
refresh();
listen();
setInterval(() => { if (!inflight) refresh(); }, REFRESH_IDLE_MS);
