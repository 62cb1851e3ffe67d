// featx serve page: classify an image, show its nearest stored neighbours, search from a neighbour.
// Talks only to this server's own API; no external resources.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, lastQuery: null, thumbURLs: [], seq: 0 };
// the feature map: the store's points (x, y, label index, row id) and where the last query landed
const map = { data: null, query: null, bounds: null };
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf"];  // never black: black is the query's marker

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const token = $("token").value || sessionStorage.getItem("featx-token");
  if (token) { h["Authorization"] = "Bearer " + token; sessionStorage.setItem("featx-token", token); }
  return h;
}

function setStatus(text, kind) {
  $("status").textContent = text;
  $("status").dataset.state = kind;
}

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
  if (message) setStatus("error", "error");
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({}, options, { headers: headers((options || {}).headers) }));
  if (response.status === 401) { $("token-box").hidden = false; }
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { const body = await response.json(); message = (body.error && body.error.message) || JSON.stringify(body); } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function fillSelect(select, names) {
  select.innerHTML = "";
  for (const name of names) {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    select.appendChild(option);
  }
  select.disabled = names.length === 0;
}

async function loadInfo() {
  try {
    state.info = await (await api("v1/info")).json();
    fillSelect($("model"), Object.keys(state.info.models));
    fillSelect($("index"), Object.keys(state.info.indexes));
    fillSelect($("projection"), Object.keys(state.info.projections || {}));
    fillSelect($("anomaly"), Object.keys(state.info.anomalies || {}));
    $("anomaly-box").hidden = Object.keys(state.info.anomalies || {}).length === 0;
    await loadMap();
    setStatus("ready", "ready");
  } catch (e) { showError("cannot read /v1/info: " + e.message); }
}

async function thumbnailURL(path) {
  const blob = await (await api(path)).blob();  // fetched with the token, unlike a plain <img src>
  const url = URL.createObjectURL(blob);
  state.thumbURLs.push(url);
  return url;
}

async function loadMap() {
  const name = $("projection").value;
  map.data = map.query = null;
  $("map-section").hidden = !name;
  if (!name) return;
  try {
    map.data = await (await api("v1/projections/" + encodeURIComponent(name))).json();
  } catch (e) { $("map-note").textContent = "cannot load the map: " + e.message; return; }
  const key = $("map-key");
  key.innerHTML = "";
  map.data.labels.forEach((label, i) => {
    const span = document.createElement("span"), dot = document.createElement("i");
    dot.style.background = PALETTE[i % PALETTE.length];
    span.append(dot, label);
    key.appendChild(span);
  });
  $("map-note").textContent = map.data.method + " of store " + map.data.store + ", " + map.data.points.length +
    (map.data.sampled ? " of " + map.data.total : "") + " images";
  drawMap();
}

function drawMap() {
  const canvas = $("map"), ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height, pad = 14;
  const points = map.data.points;
  const xs = points.map((p) => p[0]).concat(map.query ? [map.query[0]] : []);
  const ys = points.map((p) => p[1]).concat(map.query ? [map.query[1]] : []);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const sx = (x) => pad + (x - x0) / ((x1 - x0) || 1) * (W - 2 * pad);
  const sy = (y) => H - pad - (y - y0) / ((y1 - y0) || 1) * (H - 2 * pad);
  map.screen = (p) => [sx(p[0]), sy(p[1])];
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, W, H);
  const r = Math.max(2, Math.min(5, 600 / Math.sqrt(points.length + 1) / 4));
  for (const p of points) {
    ctx.fillStyle = p[2] < 0 ? "#bbb" : PALETTE[p[2] % PALETTE.length];
    ctx.beginPath(); ctx.arc(sx(p[0]), sy(p[1]), r, 0, 2 * Math.PI); ctx.fill();
  }
  if (map.query) {  // a black dot in a black ring, drawn last so no point hides it
    const [qx, qy] = [sx(map.query[0]), sy(map.query[1])];
    ctx.strokeStyle = ctx.fillStyle = "#000";
    ctx.lineWidth = 3;
    ctx.beginPath(); ctx.arc(qx, qy, 11, 0, 2 * Math.PI); ctx.stroke();
    ctx.beginPath(); ctx.arc(qx, qy, 4, 0, 2 * Math.PI); ctx.fill();
    Object.assign(canvas.dataset, { state: "placed", queryX: map.query[0], queryY: map.query[1],
      queryPx: Math.round(qx), queryPy: Math.round(qy) });
  } else {
    canvas.dataset.state = "drawn";
  }
}

async function placeQuery(query, seq) {
  const name = $("projection").value;
  if (!name || !map.data) return;
  let request;
  if (query.file) {
    const form = new FormData();
    form.append("files", query.file, query.file.name || "pasted.png");
    form.append("projection", name);
    request = { method: "POST", body: form };
  } else if (query.store === map.data.store) {
    request = { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ projection: name, rows: [query.row] }) };
  } else {
    map.query = null; drawMap(); return;  // a row of another store is not on this map
  }
  $("map").dataset.state = "placing";
  try {
    const placed = await (await api("v1/place", request)).json();
    if (seq !== state.seq) return;
    map.query = placed.results[0].coords;
    $("map-note").textContent = map.data.method + " of store " + map.data.store + "; query " +
      (placed.results[0].how === "stored" ? "at its own point" : "placed by the fitted " + placed.method);
    drawMap();
  } catch (e) { if (seq === state.seq) { $("map").dataset.state = "error"; $("map-note").textContent = "cannot place the query: " + e.message; } }
}

function renderPrediction(result, scoreKind) {
  $("prediction").hidden = false;
  $("predicted-label").textContent = result.label;
  $("predicted-score").textContent = scoreKind + " " + result.score.toFixed(3);
  const table = $("scores");
  table.innerHTML = "";
  const values = Object.values(result.scores);
  const lo = Math.min(0, ...values), hi = Math.max(...values);
  for (const [label, score] of Object.entries(result.scores).sort((a, b) => b[1] - a[1])) {
    const row = table.insertRow();
    row.insertCell().textContent = label;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = (hi > lo ? (120 * (score - lo) / (hi - lo)) : 0) + "px";
    row.insertCell().appendChild(bar);
    row.insertCell().textContent = score.toFixed(3);
  }
}

function renderAnomaly(answer) {  // the score, the decision at the model's threshold, the heatmap
  const result = answer && answer.results[0];
  $("anomaly-result").hidden = !result;
  if (!result) return;
  $("anomaly-verdict").textContent = result.anomalous ? "above the threshold" : "normal";
  $("anomaly-verdict").className = result.anomalous ? "anomalous" : "";
  $("anomaly-score").textContent = "score " + result.score.toPrecision(4) + " (threshold " + answer.threshold.toPrecision(4) + ", model " + answer.anomaly + ")";
  $("anomaly-heatmap").hidden = !result.heatmap;
  if (result.heatmap) $("anomaly-heatmap").src = result.heatmap;
}

async function renderNeighbours(search, seq) {
  const list = $("neighbours");
  for (const url of state.thumbURLs) URL.revokeObjectURL(url);
  state.thumbURLs = [];
  list.innerHTML = "";
  const neighbours = search.results[0].neighbours;
  $("neighbour-note").textContent = neighbours.length + " from index " + search.index;
  await Promise.all(neighbours.map(async (n) => {
    const item = document.createElement("li");
    item.className = "neighbour";
    item.dataset.row = n.row_id;
    item.title = n.path;
    const image = document.createElement("img");
    image.alt = "row " + n.row_id;
    const caption = document.createElement("div");
    caption.textContent = "#" + n.rank + " " + (n.label || "(no label)") + " · " + n.score.toFixed(3);
    item.append(image, caption);
    item.addEventListener("click", () => queryRow(n.row_id, search.store));
    list.appendChild(item);
    try { image.src = await thumbnailURL(n.thumbnail); } catch (e) { /* keep the caption */ }
  }));
  if (seq === state.seq) setStatus(neighbours.length + " neighbours", "done");
}

async function run(query) {
  const seq = ++state.seq;
  state.lastQuery = query;
  showError("");
  setStatus("working…", "busy");
  const k = $("k").value, model = $("model").value, index = $("index").value, anomaly = $("anomaly").value;
  placeQuery(query, seq);  // in parallel: the map does not hold up the class and neighbours
  try {
    let predict = null, search = null, scored = null;
    if (query.file) {
      const form = (fields) => { const f = new FormData(); f.append("files", query.file, query.file.name || "pasted.png");
        for (const [key, value] of Object.entries(fields)) if (value) f.append(key, value); return f; };
      const patch = anomaly && state.info.anomalies[anomaly].mode === "patch";
      [predict, search, scored] = await Promise.all([
        model ? api("v1/predict", { method: "POST", body: form({ model: model }) }).then((r) => r.json()) : null,
        index ? api("v1/search", { method: "POST", body: form({ index: index, k: k }) }).then((r) => r.json()) : null,
        anomaly ? api("v1/anomaly", { method: "POST", body: form({ anomaly: anomaly, heatmap: patch ? "true" : "" }) }).then((r) => r.json()) : null]);
    } else {
      const json = (body) => ({ method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      [predict, search] = await Promise.all([
        model ? api("v1/predict", json({ model: model, store: query.store, rows: [query.row] })).then((r) => r.json()).catch(() => null) : null,
        index ? api("v1/search", json({ index: index, rows: [query.row], k: Number(k) })).then((r) => r.json()) : null]);
    }
    if (seq !== state.seq) return;  // a newer query replaced this one
    if (predict) renderPrediction(predict.results[0], predict.score_kind); else $("prediction").hidden = true;
    renderAnomaly(scored);
    if (search) await renderNeighbours(search, seq); else setStatus("done", "done");
  } catch (e) { if (seq === state.seq) showError(e.message); }
}

function queryFile(file) {
  if (!file) return;
  const image = $("query-image");
  if (image.src) URL.revokeObjectURL(image.src);
  image.src = URL.createObjectURL(file);
  image.hidden = false;
  $("query-label").textContent = file.name || "pasted image";
  run({ file: file });
}

async function queryRow(row, store) {
  $("query-label").textContent = "store row " + row;
  try { $("query-image").src = await thumbnailURL("v1/thumbnails/" + store + "/" + row); $("query-image").hidden = false; } catch (e) { /* no preview */ }
  run({ row: row, store: store });
}

$("file-input").addEventListener("change", (e) => queryFile(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); queryFile(e.dataTransfer.files[0]); });
document.addEventListener("paste", (e) => {
  const item = [...(e.clipboardData || {}).items || []].find((i) => i.type.startsWith("image/"));
  if (item) queryFile(item.getAsFile());
});
$("k").addEventListener("input", () => { $("k-value").textContent = $("k").value; });
$("k").addEventListener("change", () => { if (state.lastQuery) run(state.lastQuery); });
$("token").addEventListener("change", loadInfo);
$("projection").addEventListener("change", () => loadMap().then(() => { if (state.lastQuery) placeQuery(state.lastQuery, state.seq); }));
$("map").addEventListener("click", (e) => {  // search from the nearest point within 8 px
  if (!map.data || !map.screen) return;
  const canvas = $("map"), box = canvas.getBoundingClientRect();
  const x = (e.clientX - box.left) * canvas.width / box.width, y = (e.clientY - box.top) * canvas.height / box.height;
  let best = null, bestDistance = 64;
  for (const p of map.data.points) {
    const [px, py] = map.screen(p), d = (px - x) ** 2 + (py - y) ** 2;
    if (d < bestDistance) { bestDistance = d; best = p; }
  }
  if (best) queryRow(best[3], map.data.store);
});
loadInfo();
