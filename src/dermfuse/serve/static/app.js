// dermfuse web page: fills the form from /model, posts to /predict, draws the result.
// Plain JS, no library, nothing loaded from the internet. Text is set with textContent only.
"use strict";

const MB = 1024 * 1024;
const $ = (id) => document.getElementById(id);
let model = null;
let file = null;

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

function drawBars(probabilities, names, top) {
  const list = $("bars");
  list.replaceChildren();
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
  const button = $("submit");
  button.disabled = true;
  button.textContent = "Classifying…";
  try {
    const response = await fetch("/predict", { method: "POST", body });
    let data = null;
    try { data = await response.json(); } catch (_) { /* not JSON */ }
    if (!response.ok) {
      showError((data && data.detail) || `The server answered ${response.status}.`);
      return;
    }
    $("top-class").textContent = model.class_names[data.top_class]
      ? `${data.top_class} (${model.class_names[data.top_class]})` : data.top_class;
    $("original").src = URL.createObjectURL(file);
    const overlay = $("overlay");
    overlay.closest("figure").hidden = !data.heatmap_png;
    if (data.heatmap_png) overlay.src = `data:image/png;base64,${data.heatmap_png}`;
    drawBars(data.probabilities, model.class_names, data.top_class);
    $("result-disclaimer").textContent = data.disclaimer;
    $("result").hidden = false;
  } catch (err) {
    showError(`Could not reach the server: ${err.message}`);
  } finally {
    button.disabled = false;
    button.textContent = "Classify";
  }
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
  try {
    const response = await fetch("/model");
    model = await response.json();
  } catch (err) {
    showError(`Could not load the model description: ${err.message}`);
    return;
  }
  fillSelect($("sex"), model.sexes);
  fillSelect($("site"), model.sites);
  $("age").min = model.age_range[0];
  $("age").max = model.age_range[1];
  $("disclaimer").textContent = model.disclaimer;
  const trained = model.training_data && model.training_data.name ? `, trained on: ${model.training_data.name}` : "";
  $("model-id").textContent = `model ${model.model_id} (${model.architecture}, ${model.classes.length} classes${trained})`;
  $("submit").disabled = !file;
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", init);
