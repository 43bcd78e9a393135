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
    showDevices([]);
    return;
  }
  const ms = r.measurements || [];
  $("summary").textContent = ms.length ? `${ms.length} measurement${ms.length === 1 ? "" : "s"}` : "no template matched this message: 0 measurements";
  const head = vf.el("tr", {}, ["#", "type", "device", "patient", "time (UTC)", "values"].map((h) => vf.el("th", {}, h)));
  $("measurements").replaceChildren(head, ...ms.map((m, i) => vf.el("tr", {},
    vf.el("td", {}, i), vf.el("td", {}, m.type), vf.el("td", {}, m.deviceId), vf.el("td", {}, m.patientId ?? "—"),
    vf.el("td", {}, m.occurrenceTimeUtc), vf.el("td", {}, m.properties.map((p) => `${p.name}=${p.value}`).join(", ")))));
  $("observations").textContent = r.observations ? JSON.stringify(r.observations, null, 2) : "— (no FHIR template)";
  showDevices(r.devices || []);
}

const VERSIONS = { 531974: "hardware", 531975: "software", 531976: "firmware" };

// The containment tree as rows, indented by depth: MDS, VMD, channel, then each metric under
// its channel (the resources link children to parents by id).
function showDevices(resources) {
  $("device-resources").textContent = resources.length ? JSON.stringify(resources, null, 2) : "—";
  if (!resources.length) {
    $("devices").replaceChildren(vf.el("tr", {}, vf.el("td", {}, "— (no IHE PCD-01 containment tree in this message)")));
    return;
  }
  const byId = new Map(resources.filter((r) => r.resourceType === "Device").map((r) => [`Device/${r.id}`, r]));
  const depth = (r) => { let d = 0; for (let p = r.parent; p && byId.has(p.reference); p = byId.get(p.reference).parent) d++; return d; };
  const concept = (c) => (c && c.coding && c.coding[0] && (c.coding[0].display || c.coding[0].code)) || "—";
  const said = (r) => [
    ["manufacturer", r.manufacturer], ["model", r.modelNumber], ["serial", r.serialNumber],
    ["bed", r.location && r.location.display], ["unit", r.unit && concept(r.unit)],
    ["status", r.operationalStatus], ["category", r.category],
    ["calibration", r.calibration && r.calibration[0].state], ["calibrated", r.calibration && r.calibration[0].time],
    ...(r.version || []).map((v) => [VERSIONS[v.type.coding[0].code] || concept(v.type), v.value]),
  ].filter(([, v]) => v).map(([k, v]) => `${k} ${v}`).join(", ");
  const ordered = [];
  const children = (ref) => resources.filter((r) => (r.parent && r.parent.reference) === ref);
  const walk = (r) => { ordered.push(r); if (r.resourceType === "Device") children(`Device/${r.id}`).forEach(walk); };
  resources.filter((r) => r.resourceType === "Device" && !r.parent).forEach(walk);
  const head = vf.el("tr", {}, ["resource", "type", "identifier", "attributes"].map((h) => vf.el("th", {}, h)));
  $("devices").replaceChildren(head, ...ordered.map((r) => {
    const d = r.resourceType === "Device" ? depth(r) : depth(byId.get(r.parent.reference) || {}) + 1;
    return vf.el("tr", { class: r.resourceType === "Device" ? "device" : "metric" },
      vf.el("td", { class: `depth-${Math.min(d, 3)}` }, r.resourceType),
      vf.el("td", {}, concept(r.type)),
      vf.el("td", {}, (r.identifier && r.identifier[0] && r.identifier[0].value) || "—"),
      vf.el("td", {}, said(r)));
  }));
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
