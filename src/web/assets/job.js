// The job page: throughput, lag, clocks, outputs' durability and dead letters.
"use strict";
let last = null;

function rows(id, head, data) {
  const t = document.getElementById(id);
  const hr = vf.el("tr", {}, head.map((h) => vf.el("th", {}, h)));
  const body = data.length ? data.map((r) => vf.el("tr", {}, r.map((c) => vf.el("td", {}, c)))) : [vf.el("tr", {}, vf.el("td", { class: "empty", colspan: head.length }, "none"))];
  t.replaceChildren(hr, ...body);
}

async function showPayload(i) {
  const pre = document.getElementById("payload");
  try {
    const d = await vf.get(`/api/dead-letters/${i}`);
    pre.textContent = `${d.position} · ${d.stage}\n${d.reason}\n\n${d.payload}`;
  } catch (e) {
    pre.textContent = e.message;
  }
  pre.hidden = false;
}

async function refresh() {
  let j;
  try {
    j = await vf.get("/api/job");
  } catch (e) {
    document.getElementById("health").textContent = "unreachable";
    document.getElementById("health").className = "pill down";
    return;
  }
  const c = j.counters;
  const rate = last ? Math.round(((c.messagesIn - last.counters.messagesIn) * 1000) / Math.max(1, j.wall - last.wall)) : 0;
  last = j;
  document.getElementById("name").textContent = j.job;
  const h = document.getElementById("health");
  h.textContent = j.healthy ? (c.failingSinks ? "output failing" : "healthy") : "failed";
  h.className = `pill ${j.healthy && !c.failingSinks ? "live" : "down"}`;
  const card = (k, n) => vf.el("div", { class: "card" }, vf.el("div", { class: "n" }, n), vf.el("div", { class: "k" }, k));
  document.getElementById("cards").replaceChildren(
    card("messages / s", rate.toLocaleString()),
    card("messages read", c.messagesIn.toLocaleString()),
    card("measurements", c.measurements.toLocaleString()),
    card("observation versions", c.observations.toLocaleString()),
    card("alert events", c.alerts.toLocaleString()),
    card("dead letters", c.deadLetters.toLocaleString()),
    card("patients on the board", j.patients.toLocaleString()),
    card("open windows", c.windowsOpen.toLocaleString()),
    card("lake rows / commits", `${c.lakeRows.toLocaleString()} / ${c.lakeCommits}`),
    card("durable epochs", c.epochsDurable.toLocaleString()),
    card("sinks failing", c.failingSinks),
    card("workers paused (backlog)", c.readingPaused));
  // A device clock set fast puts events ahead of the wall clock: said as such, not as a
  // negative lag.
  const lag = j.eventClock ? (j.wall - j.eventClock) / 1000 : null;
  const behind = lag === null ? "no data yet"
    : lag < 0 ? `ahead of the wall clock by ${(-lag).toFixed(1)} s`
    : `behind the wall clock by ${lag.toFixed(1)} s`;
  rows("clocks", ["clock", "time (UTC)", ""], [
    ["wall clock", new Date(j.wall).toISOString().replace("T", " ").slice(0, 19), ""],
    ["event clock (latest event time)", j.eventClock ? new Date(j.eventClock).toISOString().replace("T", " ").slice(0, 19) : "—", behind],
    ["outputs last durable", j.lastDurable ? new Date(j.lastDurable).toISOString().replace("T", " ").slice(0, 19) : "—", j.lastDurable ? `${((j.wall - j.lastDurable) / 1000).toFixed(1)} s ago` : ""],
  ]);
  const lat = (k) => { const l = j.latency[k]; return l ? [k, `${l.p50_ms.toFixed(1)} ms`, `${l.p99_ms.toFixed(1)} ms`, l.count.toLocaleString()] : [k, "—", "—", "0"]; };
  rows("latency", ["stage", "p50", "p99", "count"], [lat("normalize"), lat("alert"), lat("version"), lat("lake"), lat("durable"), lat("board"),
    ["epoch (opened to durable)", `${j.epochLatency.p50_ms.toFixed(1)} ms`, `${j.epochLatency.p99_ms.toFixed(1)} ms`, c.epochsDurable.toLocaleString()]]);
  rows("lag", ["topic", "partition", "unread messages"], j.lag.map((l) => [l.topic, l.partition, l.lag.toLocaleString()]));
  const d = j.deadLetters || { counts: [], latest: [] };
  rows("dead-counts", ["stage", "reason", "count"], d.counts.map((x) => [x.stage, x.reason, x.count.toLocaleString()]));
  rows("dead-latest", ["when", "stage", "reason", "position", ""], d.latest.map((x) => [
    vf.clock(x.at), x.stage, x.reason, x.position,
    vf.el("button", { onclick: () => showPayload(x.index) }, "Show payload")]));
}

refresh();
setInterval(refresh, 2000);
