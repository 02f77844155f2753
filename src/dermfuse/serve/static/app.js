// dermfuse web page: fills the form from /model, posts to /predict, draws the result.
// Plain JS, no library, nothing loaded from the internet. Text is set with textContent only.
"use strict";

const MB = 1024 * 1024;
const $ = (id) => document.getElementById(id);
let model = null;
let file = null;
let lastAnswer = null;
let objectUrl = null;

function clearResult() {
  // a failed request must not leave the previous answer on screen
  $("result").hidden = true;
  $("bars").replaceChildren();
  $("top-class").textContent = "";
  $("status").textContent = "";
  for (const id of ["original", "heatmap", "overlay"]) $(id).removeAttribute("src");
  lastAnswer = null;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function fillSelect(select, values) {
  select.replaceChildren();
  for (const v of values) {
    const opt = document.createElement("option");
    opt.value = v;
    opt.textContent = v;
    select.append(opt);
  }
  if (values.includes("unknown")) select.value = "unknown";
}

function setFile(f) {
  showError("");
  if (!f) return;
  if (model && f.size > model.max_upload_bytes) {
    showError(`"${f.name}" is ${(f.size / MB).toFixed(1)} MB; the limit is ${model.max_upload_bytes / MB} MB.`);
    return;
  }
  file = f;
  $("drop-text").textContent = `${f.name} (${(f.size / 1024).toFixed(0)} kB) — drop or click to change`;
  $("drop").classList.add("has-file");
  $("submit").disabled = !model;
}

function drawBars(probabilities, names, top, reliable) {
  const list = $("bars");
  list.replaceChildren();
  list.classList.toggle("unreliable", !reliable);
  const rows = Object.entries(probabilities).sort((a, b) => b[1] - a[1]);
  for (const [cls, p] of rows) {
    const li = document.createElement("li");
    li.className = cls === top ? "bar top" : "bar";
    li.dataset.cls = cls;
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = names[cls] && names[cls] !== cls ? `${cls} — ${names[cls]}` : cls;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = `${(100 * p).toFixed(1)} %`;
    li.append(label, track, value);
    list.append(li);
  }
}

const STATUS_TEXT = {
  ok: "",
  uncertain: "Uncertain — refer. ",
  out_of_distribution: "Not a dermoscopic lesion image like the ones this model was trained on. ",
};

function showAnswer(data) {
  const names = model.class_names;
  const label = (c) => (names[c] && names[c] !== c ? `${c} (${names[c]})` : c);
  const top = $("top-class");
  if (data.status === "out_of_distribution") top.textContent = "no class (out of distribution)";
  else if (data.status === "uncertain") top.textContent = `uncertain — refer (tentatively ${label(data.top_class)})`;
  else top.textContent = label(data.top_class);
  const status = $("status");
  status.className = `status ${data.status}`;
  status.dataset.status = data.status;
  status.textContent = STATUS_TEXT[data.status] + data.message +
    (data.probabilities_reliable ? "" : " The bars below are shown greyed: do not rely on them.");
  if (objectUrl) URL.revokeObjectURL(objectUrl);
  objectUrl = URL.createObjectURL(file);
  $("original").src = objectUrl;
  const hasMap = Boolean(data.heatmap_png);
  $("map-figure").hidden = !hasMap;
  $("overlay-figure").hidden = !hasMap;
  $("colorbar").hidden = !hasMap;
  if (hasMap) {
    $("heatmap").src = `data:image/png;base64,${data.map_png}`;
    $("overlay").src = `data:image/png;base64,${data.heatmap_png}`;
    $("map-caption").textContent = `heatmap for ${label(data.explained_class)}`;
  }
  drawBars(data.probabilities, names, data.top_class, data.probabilities_reliable);
  $("result-disclaimer").textContent = data.disclaimer;
  $("result").hidden = false;
}

async function submit(event) {
  event.preventDefault();
  showError("");
  if (!file) {
    showError("Choose an image first.");
    return;
  }
  const body = new FormData();
  body.append("image", file, file.name);
  body.append("age", $("age").value.trim());
  body.append("sex", $("sex").value);
  body.append("site", $("site").value);
  body.append("explain", $("explain").value);
  body.append("operating_point", $("operating-point").value);
  const button = $("submit");
  button.disabled = true;
  button.textContent = "Classifying…";
  try {
    const response = await fetch("/predict", { method: "POST", body });
    let data = null;
    try { data = await response.json(); } catch (_) { /* not JSON */ }
    if (!response.ok) {
      clearResult();
      showError((data && data.detail) || `The server answered ${response.status}.`);
      return;
    }
    lastAnswer = data;
    showAnswer(data);
  } catch (err) {
    clearResult();
    showError(`Could not reach the server: ${err.message}`);
  } finally {
    button.disabled = false;
    button.textContent = "Classify";
  }
}

function downloadAnswer() {
  if (!lastAnswer) return;
  const blob = new Blob([JSON.stringify(lastAnswer, null, 2)], { type: "application/json" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = `dermfuse-${lastAnswer.model_id}-answer.json`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

function el(tag, text) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmtCi(m) {
  if (!m || m.value === null || m.value === undefined) return "–";
  const f = (v) => (v === null || v === undefined ? "–" : v.toFixed(3));
  return `${f(m.value)} [${f(m.low)}, ${f(m.high)}]`;
}

function renderCard(card) {
  const body = $("card-body");
  body.replaceChildren();
  const section = (title, items) => {
    if (!items || (Array.isArray(items) && !items.length)) return;
    body.append(el("h3", title));
    if (Array.isArray(items)) {
      const ul = el("ul");
      for (const x of items) ul.append(el("li", x));
      body.append(ul);
    } else if (typeof items === "object") {
      const ul = el("ul");
      for (const [k, v] of Object.entries(items)) {
        if (v !== null && typeof v !== "object") ul.append(el("li", `${k}: ${v}`));
      }
      body.append(ul);
    } else body.append(el("p", String(items)));
  };
  section("Intended use", card.intended_use);
  section("Must not be used for", card.not_for);
  section("Training data", card.data_source);
  section("Population limits", card.population_limits);
  section("Training", card.training);
  const perf = card.performance || {};
  if (perf.holdout) {
    body.append(el("h3", `Held-out lesions (${perf.holdout.n_images} images, 95 % lesion-bootstrap intervals)`));
    const t = el("table");
    for (const [k, v] of Object.entries(perf.holdout.overall || {})) {
      const tr = el("tr");
      tr.append(el("td", k), el("td", fmtCi(v)));
      t.append(tr);
    }
    for (const [c, v] of Object.entries(perf.holdout.per_class || {})) {
      const tr = el("tr");
      tr.append(el("td", `${c} sensitivity / specificity (n ${v.n})`), el("td", `${fmtCi(v.sensitivity)} / ${fmtCi(v.specificity)}`));
      t.append(tr);
    }
    body.append(t);
  } else section("Performance", perf.note || "none recorded");
  section("When not to trust it", card.trust);
  section("Licence", card.license);
}
function wireDrop() {
  const drop = $("drop");
  $("image").addEventListener("change", (e) => setFile(e.target.files[0]));
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => setFile(e.dataTransfer.files[0]));
}

async function init() {
  wireDrop();
  $("form").addEventListener("submit", submit);
  $("download").addEventListener("click", downloadAnswer);
  try {
    const response = await fetch("/model");
    model = await response.json();
  } catch (err) {
    showError(`Could not load the model description: ${err.message}`);
    return;
  }
  // the figures show what the model sees: its input's aspect ratio (a side, or [height, width])
  const [h, w] = Array.isArray(model.image_size) ? model.image_size : [model.image_size, model.image_size];
  document.documentElement.style.setProperty("--aspect", `${w} / ${h}`);
  if (h !== w) $("original-caption").textContent = `original (resized to ${h} x ${w}, as the model sees it)`;
  fillSelect($("sex"), model.sexes);
  fillSelect($("site"), model.sites);
  $("age").min = model.age_range[0];
  $("age").max = model.age_range[1];
  $("disclaimer").textContent = model.disclaimer;
  for (const c of model.classes) {
    const opt = el("option", model.class_names[c] && model.class_names[c] !== c ? `${c} — ${model.class_names[c]}` : c);
    opt.value = c;
    $("explain").append(opt);
  }
  $("explain").disabled = !model.can_explain;
  fillSelect($("operating-point"), model.operating_points);
  $("operating-point").value = model.default_operating_point;
  $("point-label").hidden = model.operating_points.length < 2;
  const card = model.card || {};
  const src = card.data_source || model.training_data || {};
  const name = card.name || model.architecture;
  $("model-name").textContent = `${name} — id ${model.model_id}${model.released ? " (the released model)" : ""}`;
  const n = src.n_train ? `, ${src.n_train} training images` : "";
  $("model-data").textContent = `${src.name || src.path || "unknown data"}${n}`;
  $("synthetic-banner").hidden = !model.synthetic;
  document.body.classList.toggle("is-synthetic", Boolean(model.synthetic));
  renderCard(card);
  $("model-id").textContent = `model ${model.model_id} (${model.architecture}, ${model.classes.length} classes)`;
  $("submit").disabled = !file;
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", init);
