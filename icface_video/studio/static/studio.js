// icface-video studio page: sliders -> /api/render, one request in flight at a time
// (the newest values win), drafts while a slider moves, full size on release.
"use strict";
const $ = (id) => document.getElementById(id);
const S = { sliders: [], source: null, clip: null, values: {}, keys: [], version: 0, shown: 0,
            inflight: false, pending: null, ready: false };
window.studio = S;

function message(text, isError) {
  const m = $("message");
  m.textContent = text || "";
  m.className = isError ? "error" : "";
}

async function api(path, body) {
  S.busy = (S.busy || 0) + 1;   // requests other than renders in flight (tests wait for 0)
  try {
    const r = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" },
                                  body: JSON.stringify(body || {}) });
    const data = await r.json().catch(() => ({ error: `${path}: HTTP ${r.status}` }));
    if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
    return data;
  } finally { S.busy -= 1; }
}

function driveState() {
  if (!S.clip || !$("drive-on").checked) return null;
  const d = { parts: [] };
  for (const c of S.driveControls) {
    if (c.kind === "multi") d[c.name] = c.choices.filter((p) => $(`drive-${c.name}-${p}`).checked);
    else if (c.kind === "bool") d[c.name] = $(`drive-${c.name}`).checked;
    else if (c.kind === "choice") d[c.name] = $(`drive-${c.name}`).value;
    else d[c.name] = parseFloat($(`drive-${c.name}`).value);
  }
  return d;
}
function keysOn() { return !driveState() && S.keys.length > 0 && $("keys-preview").checked; }
function renderBody(draft) {
  if (keysOn()) return { values: S.values, keys: S.keys, time: parseFloat($("keys-timeline").value), draft };
  return { values: S.values, drive: driveState(), time: clipTime(), draft };
}
function clipTime() { return S.clip ? S.clip.times[parseInt($("timeline").value, 10)] || 0 : 0; }

function requestRender(draft) {
  if (!S.source) return;
  S.version += 1;
  S.pending = { draft, version: S.version };
  S.ready = false;
  $("preview-state").textContent = "rendering";
  pump();
}

async function pump() {
  if (S.inflight || !S.pending) return;
  const req = S.pending;
  S.pending = null;
  S.inflight = true;
  try {
    const r = await fetch("/api/render", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(renderBody(req.draft)) });
    if (!r.ok) { const e = await r.json().catch(() => ({})); throw new Error(e.error || `HTTP ${r.status}`); }
    const blob = await r.blob();
    const img = $("preview-img");
    const old = img.src;
    img.src = URL.createObjectURL(blob);
    await img.decode().catch(() => {});
    if (old.startsWith("blob:")) URL.revokeObjectURL(old);
    img.dataset.version = String(req.version);
    img.dataset.draft = req.draft ? "1" : "0";
    S.shown = req.version;
  } catch (err) {
    message(err.message, true);
  } finally {
    S.inflight = false;
    if (S.pending) pump();
    else if (!req.draft) { S.ready = true; $("preview-state").textContent = ""; refreshCommands(); }
    else requestRender(false);   // a draft was the last: the full size follows
  }
}

function fmt(s, v) { return s.unit === "deg" ? `${v.toFixed(1)}°` : v.toFixed(2); }

function setSlider(name, v) {
  S.values[name] = v;
  const s = S.sliders.find((x) => x.name === name);
  $(`slider-${name}`).value = v;
  $(`value-${name}`).textContent = fmt(s, v);
}

function buildSliders() {
  const box = $("sliders");
  box.innerHTML = "";
  const regions = [...new Set(S.sliders.map((s) => s.region))];
  for (const region of regions) {
    const fs = document.createElement("fieldset");
    const lg = document.createElement("legend");
    lg.textContent = region;
    const rb = document.createElement("button");
    rb.textContent = "reset";
    rb.id = `reset-region-${region}`;
    rb.onclick = () => { for (const s of S.sliders.filter((x) => x.region === region)) setSlider(s.name, S.source.values[s.name]); requestRender(false); };
    lg.appendChild(rb);
    fs.appendChild(lg);
    for (const s of S.sliders.filter((x) => x.region === region)) {
      const row = document.createElement("div");
      row.className = "slider";
      const label = document.createElement("label");
      label.htmlFor = `slider-${s.name}`;
      label.textContent = s.unit === "deg" ? `${s.name} (degrees)` : `${s.name} ${s.label}`;
      if (s.model_top !== null) label.title = `The shipped model reads the same above ${s.model_top}`;
      const input = document.createElement("input");
      Object.assign(input, { type: "range", id: `slider-${s.name}`, min: s.min, max: s.max, step: s.step });
      input.addEventListener("input", () => { S.values[s.name] = parseFloat(input.value); $(`value-${s.name}`).textContent = fmt(s, S.values[s.name]); requestRender(true); });
      input.addEventListener("change", () => requestRender(false));
      const val = document.createElement("span");
      val.id = `value-${s.name}`;
      const reset = document.createElement("button");
      reset.textContent = "↺";
      reset.title = "reset to the source's value";
      reset.id = `reset-${s.name}`;
      reset.onclick = () => { setSlider(s.name, S.source.values[s.name]); requestRender(false); };
      row.append(label, input, val, reset);
      fs.appendChild(row);
    }
    box.appendChild(fs);
  }
}

function buildDriveControls() {
  const box = $("drive-controls");
  box.innerHTML = "";
  for (const c of S.driveControls) {
    const wrap = document.createElement("span");
    wrap.title = `${c.flag}: ${c.help}`;
    if (c.kind === "multi") {
      for (const p of c.choices) {
        const l = document.createElement("label");
        const i = Object.assign(document.createElement("input"), { type: "checkbox", id: `drive-${c.name}-${p}`, checked: c.default.includes(p) });
        i.onchange = () => requestRender(false);
        l.append(i, ` ${p}`);
        wrap.appendChild(l);
      }
    } else if (c.kind === "bool") {
      const l = document.createElement("label");
      const i = Object.assign(document.createElement("input"), { type: "checkbox", id: `drive-${c.name}`, checked: c.default });
      i.onchange = () => requestRender(false);
      l.append(i, ` ${c.name}`);
      wrap.appendChild(l);
    } else if (c.kind === "choice") {
      const sel = Object.assign(document.createElement("select"), { id: `drive-${c.name}` });
      for (const v of c.choices) sel.add(new Option(v, v, v === c.default, v === c.default));
      sel.onchange = () => requestRender(false);
      wrap.append(`${c.name} `, sel);
    } else {
      const i = Object.assign(document.createElement("input"), { type: "number", id: `drive-${c.name}`, min: c.min, max: c.max, step: c.step, value: c.default });
      i.onchange = () => requestRender(false);
      wrap.append(`${c.name} `, i);
    }
    box.appendChild(wrap);
  }
}

function showSource(src) {
  S.source = src;
  $("source-name").textContent = `${src.name} (${src.width}x${src.height})`;
  $("source-img").src = `/api/source.png?v=${Date.now()}`;
  for (const s of S.sliders) setSlider(s.name, src.values[s.name]);
  S.keys = [];
  showKeys();
  requestRender(false);
}

function showClip(clip) {
  S.clip = clip;
  $("timeline-box").hidden = !clip;
  if (!clip) return;
  $("clip-name").textContent = `${clip.name} (${clip.frames} frames)`;
  $("timeline").max = clip.frames - 1;
  $("timeline").value = 0;
  showFrame();
}
function showFrame() {
  const i = parseInt($("timeline").value, 10);
  $("clip-img").src = `/api/clip/frame/${i}`;
  $("time-label").textContent = `${clipTime().toFixed(2)} s`;
}

function setPresets(names) {
  const sel = $("preset-select");
  const keep = sel.value;
  sel.innerHTML = "";
  for (const n of names) sel.add(new Option(n, n));
  if (names.includes(keep)) sel.value = keep;
}

async function refreshCommands() {
  if (!S.source) return;
  try {
    const c = await api("/api/commands", { values: S.values, drive: driveState(), output: $("video-name").value });
    $("cmd-still").textContent = c.still ? `# this picture\n${c.still}` : "";
    $("cmd-video").textContent = c.video ? `# the video\n${c.video}` : "";
    $("cmd-batch").textContent = c.batch ? `# as a batch job file entry\n${c.batch}` : "";
  } catch (err) { message(err.message, true); }
}

async function upload(kind, file) {
  message(`loading ${file.name} ...`);
  const r = await fetch(`/api/upload/${kind}`, { method: "POST", body: file, headers: { "X-Filename": file.name } });
  const data = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
  if (!r.ok) { message(data.error, true); return null; }
  message(`loaded ${file.name}`);
  return data;
}

function showKeys() {
  const ol = $("keys");
  ol.innerHTML = "";
  S.keys.sort((a, b) => a.time - b.time);
  for (const [i, k] of S.keys.entries()) {
    const li = document.createElement("li");
    const changed = S.sliders.filter((s) => Math.abs(k.values[s.name] - S.source.values[s.name]) > (s.unit ? 0.25 : 0.025));
    li.textContent = `${k.time.toFixed(2)} s: ${changed.map((s) => `${s.name} ${fmt(s, k.values[s.name])}`).join(", ") || "the source's values"} `;
    const del = document.createElement("button");
    del.textContent = "remove";
    del.onclick = () => { S.keys.splice(i, 1); showKeys(); };
    li.appendChild(del);
    ol.appendChild(li);
  }
  $("keys-box").hidden = S.keys.length === 0;
  const end = S.keys.length ? S.keys[S.keys.length - 1].time : 0;
  $("keys-timeline").max = end;
  if (parseFloat($("keys-timeline").value) > end) $("keys-timeline").value = end;
}

async function pollJob() {
  const r = await fetch("/api/job");
  const job = await r.json();
  if (!job) return;
  $("job-progress").max = Math.max(job.total, 1);
  $("job-progress").value = job.done;
  $("job-status").textContent = job.state === "running" ? `${job.stage} ${job.done}/${job.total}` : job.state;
  $("job-status").dataset.state = job.state;
  if (job.state === "running") setTimeout(pollJob, 300);
  else if (job.state === "done") $("exported").innerHTML = `wrote <a href="/files/${encodeURIComponent(job.output)}">${job.output}</a>`;
  else message(job.error, true);
}

async function init() {
  const st = await (await fetch("/api/state")).json();
  S.sliders = st.sliders;
  S.driveControls = st.drive_controls;
  buildSliders();
  buildDriveControls();
  setPresets(st.presets);
  if (st.source) showSource(st.source);
  showClip(st.clip);
  if (!st.source) message("open a photo to start");

  $("source-file").onchange = async (e) => { const f = e.target.files[0]; e.target.value = ""; if (!f) return; const d = await upload("source", f); if (d) showSource(d.source); };
  $("clip-file").onchange = async (e) => { const f = e.target.files[0]; e.target.value = ""; if (!f) return; const d = await upload("clip", f); if (d) { showClip(d.clip); requestRender(false); } };
  $("preset-file").onchange = async (e) => { const f = e.target.files[0]; e.target.value = ""; if (!f) return; const d = await upload("preset", f); if (d) { setPresets(d.presets); $("preset-select").value = d.preset; } };
  $("timeline").addEventListener("input", () => { showFrame(); requestRender(true); });
  $("timeline").addEventListener("change", () => requestRender(false));
  $("drive-on").onchange = () => requestRender(false);
  $("keys-preview").onchange = () => requestRender(false);
  $("keys-timeline").addEventListener("input", () => {
    $("keys-time-label").textContent = `${parseFloat($("keys-timeline").value).toFixed(2)} s`;
    if (keysOn()) requestRender(true);
  });
  $("keys-timeline").addEventListener("change", () => { if (keysOn()) requestRender(false); });
  $("preset-apply").onclick = async () => {
    try {
      const d = await api("/api/preset", { name: $("preset-select").value, values: S.values });
      for (const s of S.sliders) setSlider(s.name, d.values[s.name]);
      message(`applied ${$("preset-select").value}`);
      requestRender(false);
    } catch (err) { message(err.message, true); }
  };
  $("export-preset").onclick = async () => {
    try {
      const d = await api("/api/export/preset", { name: $("export-name").value, description: $("export-description").value,
        values: S.values, drive: driveState(), overwrite: $("overwrite").checked });
      setPresets(d.presets);
      $("exported").textContent = `saved ${d.path}`;
      $("exported").dataset.file = d.path;
      message(`saved preset ${d.file}`);
    } catch (err) { message(err.message, true); }
  };
  $("key-add").onclick = () => {
    const t = parseFloat($("key-time").value);
    S.keys = S.keys.filter((k) => Math.abs(k.time - t) > 1e-6);
    S.keys.push({ time: t, values: { ...S.values } });
    $("key-time").value = (t + 1).toFixed(1);
    showKeys();
  };
  $("keys-clear").onclick = () => { S.keys = []; showKeys(); };
  $("export-keys").onclick = async () => {
    try {
      const d = await api("/api/export/keyframes", { name: $("keys-name").value, keys: S.keys, overwrite: $("overwrite").checked });
      $("exported").textContent = `saved ${d.path}`;
      $("exported").dataset.file = d.path;
      message(`saved keyframes ${d.file}`);
    } catch (err) { message(err.message, true); }
  };
  $("render-video").onclick = async () => {
    try {
      const drive = driveState();
      const job = await api("/api/render-video", { values: S.values, drive, output: $("video-name").value,
        keys: drive ? null : S.keys, overwrite: $("overwrite").checked });
      $("cmd-video").textContent = `# the video\n${job.command}`;
      $("exported").textContent = "";
      pollJob();
    } catch (err) { message(err.message, true); }
  };
  $("video-name").onchange = refreshCommands;
  // Large photos are fitted to the window; a click shows both at their full resolution.
  for (const id of ["source-img", "preview-img"]) $(id).onclick = () => document.querySelector(".pics").classList.toggle("natural");
}

init().catch((err) => message(err.message, true));
