// The mapping debugger: templates and a message in, measurements, Observations or the exact
// problem (template index, path, reason) out, from the job's own engine.
"use strict";
const $ = (id) => document.getElementById(id);
let original = { device: "", fhir: "" };

function problem(err) {
  const t = err.template || {};
  const where = [];
  if (t.file) where.push(`${t.file}${t.line ? ":" + t.line : ""}`);
  if (t.index !== undefined && t.index !== null) where.push(`template #${t.index}`);
  if (t.templateType) where.push(t.templateType);
  if (t.typeName) where.push(`typeName "${t.typeName}"`);
  if (t.field) where.push(`field ${t.field}`);
  if (t.pointer) where.push(`at ${t.pointer}`);
  return vf.el("div", { class: "problem", "data-kind": err.kind },
    vf.el("div", {}, err.reason),
    where.length ? vf.el("div", { class: "where" }, where.join(" · ")) : null);
}

async function run() {
  $("problems").replaceChildren();
  $("summary").textContent = "…";
  let r;
  try {
    r = await vf.post("/api/debug", { message: $("message").value, device: $("device").value, fhir: $("fhir").value });
  } catch (e) {
    $("summary").textContent = e.message;
    return;
  }
  if (r.error) {
    $("summary").replaceChildren(vf.el("span", { class: "error" }, r.error.kind === "template" ? "The templates do not load" : "The message cannot be normalized"));
    const all = r.error.errors && r.error.errors.length
      ? r.error.errors.map((e) => ({ kind: "template", reason: e.message || e.reason || JSON.stringify(e), template: { file: e.file, line: e.line, pointer: e.pointer, index: e.templateIndex ?? e.template_index, templateType: e.templateType ?? e.template_type, typeName: e.typeName ?? e.type_name } }))
      : [r.error];
    $("problems").replaceChildren(...all.map(problem));
    $("measurements").replaceChildren();
    $("observations").textContent = "—";
    return;
  }
  const ms = r.measurements || [];
  $("summary").textContent = ms.length ? `${ms.length} measurement${ms.length === 1 ? "" : "s"}` : "no template matched this message: 0 measurements";
  const head = vf.el("tr", {}, ["#", "type", "device", "patient", "time (UTC)", "values"].map((h) => vf.el("th", {}, h)));
  $("measurements").replaceChildren(head, ...ms.map((m, i) => vf.el("tr", {},
    vf.el("td", {}, i), vf.el("td", {}, m.type), vf.el("td", {}, m.deviceId), vf.el("td", {}, m.patientId ?? "—"),
    vf.el("td", {}, m.occurrenceTimeUtc), vf.el("td", {}, m.properties.map((p) => `${p.name}=${p.value}`).join(", ")))));
  $("observations").textContent = r.observations ? JSON.stringify(r.observations, null, 2) : "— (no FHIR template)";
}

function download(name, text) {
  const a = vf.el("a", { href: URL.createObjectURL(new Blob([text], { type: "application/json" })), download: name });
  document.body.append(a);
  a.click();
  a.remove();
}

$("run").addEventListener("click", run);
$("download-device").addEventListener("click", () => download("devicecontent.json", $("device").value));
$("download-fhir").addEventListener("click", () => download("fhirmapping.json", $("fhir").value));
$("reset").addEventListener("click", () => { $("device").value = original.device; $("fhir").value = original.fhir; });
$("upload").addEventListener("change", async (e) => {
  const f = e.target.files[0];
  if (f) { $("message").value = await f.text(); run(); }
});
vf.get("/api/templates").then((t) => {
  original = t;
  $("device").value = t.device;
  $("fhir").value = t.fhir;
  if (!$("message").value) $("message").value = t.sample;
  if ($("message").value.trim()) run();
}).catch((e) => { $("summary").textContent = e.message; });
vf.get("/api/whoami").then((w) => { if (!w.board) $("nav").replaceChildren(vf.el("a", { href: "/debugger", class: "here" }, "Mapping debugger")); }).catch(() => {});
