// The ward board: a tile per patient, alerts apart by category, live over server-sent events.
"use strict";
let board = { patients: [], alerts: [], history: [], clock: 0 };
let me = { user: null, acks: false, acksOff: null };
const fresh = new Set();

function level(a) {
  if (!a) return "";
  return a.category === "technical" ? "technical" : a.severity;
}

function levelWord(a) {
  if (a.category === "technical") return "TECHNICAL";
  return a.severity === "critical" ? "CRITICAL" : "WARNING";
}

function spark(trend, w, h) {
  const s = vf.svg("svg", { class: "spark", width: w, height: h, viewBox: `0 0 ${w} ${h}` });
  if (!trend || trend.length < 2) return s;
  const xs = trend.map((p) => p[0]), ys = trend.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const pts = trend.map(([x, y]) => {
    const px = x1 === x0 ? 0 : ((x - x0) / (x1 - x0)) * (w - 2) + 1;
    const py = y1 === y0 ? h / 2 : h - 1 - ((y - y0) / (y1 - y0)) * (h - 2);
    return `${px.toFixed(1)},${py.toFixed(1)}`;
  });
  s.append(vf.svg("polyline", { points: pts.join(" ") }));
  return s;
}

function alertLine(a) {
  const by = a.by ? vf.el("div", { class: "ack" }, `${a.state === "acknowledged" ? "acknowledged" : "seen"} by ${a.by}${a.note ? ": " + a.note : ""}${a.until ? " · silenced until " + a.until.slice(11, 16) : ""}`) : null;
  return vf.el("div", { class: `alertline ${level(a)}` }, `${levelWord(a)} · ${a.title}`, by);
}

function tile(p) {
  const a = p.alert;
  const news = p.news2
    ? vf.el("span", { class: `badge news ${p.news2.risk || ""}`, title: "NEWS2" }, `NEWS2 ${p.news2.score}`)
    : null;
  const rows = p.vitals.map((v) =>
    vf.el("tr", { class: v.stale ? "stale" : "" },
      vf.el("td", { class: "label" }, v.label),
      vf.el("td", {}, spark(v.trend, 80, 18)),
      vf.el("td", { class: "value" }, v.value),
      vf.el("td", { class: "age", title: "age of the reading, event time" }, vf.age(v.ageSeconds))));
  const scoring = p.news2 && p.news2.scoring.length
    ? vf.el("div", { class: "news-detail" }, "NEWS2: " + p.news2.scoring.map((s) => `${s.parameter} +${s.score}`).join(", "))
    : null;
  return vf.el("article", { class: `tile ${level(a)}`, "data-key": p.key, "data-level": level(a) || "none", onclick: () => drill(p.key) },
    vf.el("div", { class: "head" },
      vf.el("span", {}, vf.el("span", { class: "who" }, p.patient), " ", vf.el("span", { class: "dev" }, p.device)),
      news),
    a ? alertLine(a) : null,
    vf.el("table", { class: "vitals" }, rows),
    scoring);
}

function rank(p) {
  const a = p.alert;
  if (!a) return 0;
  if (a.category === "technical") return 1;
  return a.severity === "critical" ? 3 : 2;
}

function alertCard(a, actions) {
  const buttons = actions && me.acks && a.state !== "resolved"
    ? vf.el("div", {},
        a.state === "acknowledged" ? null : vf.el("button", { class: "primary", "data-action": "acknowledge", onclick: () => ackDialog(a, "acknowledge") }, "Acknowledge"), " ",
        vf.el("button", { "data-action": "silence", onclick: () => ackDialog(a, "silence") }, "Silence"))
    : null;
  const who = a.by ? vf.el("div", { class: "meta" }, `${a.state === "acknowledged" ? "Acknowledged" : "Seen"} by ${a.by}${a.note ? " — " + a.note : ""}${a.until ? " · silenced until " + a.until.slice(11, 16) : ""}`) : null;
  return vf.el("div", { class: `alert ${level(a)} ${fresh.has(a.id) ? "fresh" : ""}`, "data-id": a.id, "data-state": a.state },
    vf.el("div", { class: "title" }, `${levelWord(a)} · ${a.title}`),
    vf.el("div", { class: "meta" }, `${a.patient} · ${a.state} ${vf.clock(Date.parse(a.at))}`),
    vf.el("div", { class: "text" }, a.text), who, buttons);
}

function render() {
  document.getElementById("clock").textContent = vf.clock(board.clock);
  const open = board.alerts.length;
  document.getElementById("counts").textContent = `${board.patients.length} patients · ${open} open alert${open === 1 ? "" : "s"}`;
  const ps = [...board.patients].sort((x, y) => rank(y) - rank(x) || x.patient.localeCompare(y.patient));
  document.getElementById("tiles").replaceChildren(...ps.map(tile));
  const phys = board.alerts.filter((a) => a.category !== "technical");
  const tech = board.alerts.filter((a) => a.category === "technical");
  const none = (t) => vf.el("div", { class: "empty" }, t);
  document.getElementById("physiological").replaceChildren(...(phys.length ? phys.map((a) => alertCard(a, true)) : [none("none open")]));
  document.getElementById("technical").replaceChildren(...(tech.length ? tech.map((a) => alertCard(a, true)) : [none("none open")]));
  document.getElementById("history").replaceChildren(...board.history.slice(0, 15).map((a) => alertCard(a, false)));
}

// Values every 5 s; trends (one point a minute) with every 12th read only: at 2,000
// patients a read with trends is 2 MB, one without a tenth of that (docs/board.md).
let reads = 0;
const trends = new Map();
async function refresh() {
  const withTrends = reads++ % 12 === 0;
  try {
    const b = await vf.get(`/api/board?trend=${withTrends ? 60 : 0}`);
    for (const p of b.patients) {
      for (const v of p.vitals) {
        const k = `${p.key}/${v.key}`;
        if (withTrends) trends.set(k, v.trend);
        else v.trend = trends.get(k) || [];
      }
    }
    board = b;
    // Whether acknowledgements are taken can change: the job takes them once its input is
    // ready, which may be after this page loaded, and a restarted job may differ.
    if (!me.acks || reads % 12 === 1) me = await vf.get("/api/whoami");
    render();
  } catch (e) {
    setLive(false);
  }
}

// Alerting's emission to this page's render, ms, per live alert event (tests read it).
window.vfLatencies = [];

// An alert event from the job, applied at once (the next refresh brings the rest).
function onAlert(a) {
  fresh.add(a.id);
  setTimeout(() => fresh.delete(a.id), 4000);
  board.history.unshift(a);
  const i = board.alerts.findIndex((x) => x.id === a.id);
  if (a.state === "resolved") {
    if (i >= 0) board.alerts.splice(i, 1);
  } else if (a.state === "acknowledged" || a.state === "silenced") {
    if (i >= 0) Object.assign(board.alerts[i], { by: a.by, note: a.note, until: a.until || board.alerts[i].until, state: a.state === "acknowledged" ? "acknowledged" : board.alerts[i].state });
  } else if (i >= 0) {
    board.alerts[i] = a;
  } else {
    board.alerts.unshift(a);
  }
  for (const p of board.patients) {
    if (p.key !== a.key) continue;
    const mine = board.alerts.filter((x) => x.key === p.key);
    mine.sort((x, y) => rank({ alert: y }) - rank({ alert: x }));
    p.alert = mine[0] || null;
  }
  board.alerts.sort((x, y) => rank({ alert: y }) - rank({ alert: x }) || Date.parse(y.at) - Date.parse(x.at));
  render();
  if (a.emitted_us) window.vfLatencies.push(Date.now() - a.emitted_us / 1000);
}

function setLive(up) {
  const l = document.getElementById("live");
  l.textContent = up ? "live" : "reconnecting";
  l.className = `pill ${up ? "live" : "down"}`;
}

function connect() {
  const es = new EventSource("/api/events");
  es.onopen = () => { setLive(true); refresh(); };
  es.addEventListener("alert", (e) => onAlert(JSON.parse(e.data)));
  // EventSource retries by itself (the server asks for 2 s): a restarted job is picked up.
  es.onerror = () => setLive(false);
}

function closeDialog() { document.getElementById("overlay").hidden = true; }

function ackDialog(a, action) {
  const d = document.getElementById("dialog");
  const name = me.user ? null : vf.el("input", { id: "ack-by", placeholder: "your name", autocomplete: "name" });
  const minutes = action === "silence"
    ? vf.el("select", { id: "ack-minutes" }, [2, 5, 10, 15, 30].map((m) => vf.el("option", { value: m }, `${m} minutes`)))
    : null;
  const note = vf.el("textarea", { id: "ack-note", rows: 2, placeholder: "optional" });
  const err = vf.el("div", { class: "error" });
  const submit = async () => {
    const body = { note: note.value };
    if (name) body.by = name.value;
    if (minutes) body.minutes = Number(minutes.value);
    try {
      await vf.post(`/api/alerts/${encodeURIComponent(a.id)}/${action}`, body);
      closeDialog();
    } catch (e) {
      err.textContent = e.message;
    }
  };
  const parts = [
    vf.el("h3", {}, `${action === "silence" ? "Silence" : "Acknowledge"}: ${a.title}`),
    vf.el("div", { class: "meta" }, `${a.patient} · ${a.text}`),
  ];
  if (me.user) parts.push(vf.el("div", {}, `as ${me.user}`));
  else parts.push(vf.el("label", { for: "ack-by" }, "Who"), name);
  if (minutes) parts.push(vf.el("label", { for: "ack-minutes" }, "For"), minutes);
  parts.push(vf.el("label", { for: "ack-note" }, "Note"), note, err,
    vf.el("div", { class: "buttons" },
      vf.el("button", { onclick: closeDialog }, "Cancel"),
      vf.el("button", { class: "primary", id: "ack-submit", onclick: submit }, action === "silence" ? "Silence" : "Acknowledge")));
  d.replaceChildren(...parts);
  document.getElementById("overlay").hidden = false;
  (name || note).focus();
}

// A vital's trend on a time axis shared by the patient's charts (from, to: seconds).
function chart(v, from, to) {
  const w = 640, h = 110, pad = 34;
  const s = vf.svg("svg", { width: w, height: h });
  const t = v.trend;
  const X = (x) => pad + (to === from ? 0 : ((x - from) / (to - from)) * (w - pad - 8));
  s.append(vf.svg("line", { x1: pad, y1: h - 12, x2: w, y2: h - 12 }));
  const label = (x, y, text) => { const e = vf.svg("text", { x, y }); e.textContent = text; s.append(e); };
  label(pad, h - 1, vf.clock(from * 1000).slice(0, 5));
  label(w - 34, h - 1, vf.clock(to * 1000).slice(0, 5));
  if (t.length) {
    const ys = t.map((p) => p[1]);
    const y0 = Math.min(...ys), y1 = Math.max(...ys);
    const Y = (y) => (y1 === y0 ? h / 2 : h - 16 - ((y - y0) / (y1 - y0)) * (h - 28));
    if (t.length === 1) {
      s.append(vf.svg("circle", { cx: X(t[0][0]), cy: Y(t[0][1]), r: 3, fill: "#58a6ff" }));
    } else {
      s.append(vf.svg("polyline", { points: t.map(([x, y]) => `${X(x).toFixed(1)},${Y(y).toFixed(1)}`).join(" ") }));
    }
    label(0, Y(y1) + 4, y1);
    if (y1 !== y0) label(0, Y(y0) + 4, y0);
  }
  return vf.el("div", { class: "chart" }, vf.el("b", {}, `${v.label} ${v.value}`), s);
}

async function drill(key) {
  const d = document.getElementById("dialog");
  try {
    const p = await vf.get(`/api/patient/${key}`);
    const to = Math.floor(p.clock / 1000);
    const starts = p.vitals.flatMap((v) => v.trend.map((x) => x[0]));
    const from = Math.min(to - 600, ...starts);
    d.replaceChildren(
      vf.el("h3", {}, `${p.patient} · last 4 hours`),
      vf.el("div", { class: "meta" }, `device ${p.device}`),
      ...p.vitals.map((v) => chart(v, from, to)),
      vf.el("div", { class: "buttons" }, vf.el("button", { onclick: closeDialog }, "Close")));
  } catch (e) {
    d.replaceChildren(vf.el("div", { class: "error" }, e.message), vf.el("button", { onclick: closeDialog }, "Close"));
  }
  document.getElementById("overlay").hidden = false;
}

document.getElementById("overlay").addEventListener("click", (e) => { if (e.target.id === "overlay") closeDialog(); });
document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeDialog(); });
vf.get("/api/whoami").then((w) => { me = w; render(); }).catch(() => {});
connect();
refresh();
setInterval(refresh, 5000);
