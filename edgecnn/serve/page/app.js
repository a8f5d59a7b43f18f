// The page to try a model (edgecnn serve): plain JavaScript on the server's own /v1 API, no
// framework and nothing fetched from elsewhere. The token is only what the user types; it is sent
// on each API call and kept in this tab's sessionStorage at most.

const TOKEN_KEY = "edgecnn.token";
const TOP_K = 5;
const ALPHA = 0.5; // the mask's opacity over the image, as `predict --save`
// Classes left unpainted in an overlay, as edgecnn.runtime.heads.draw.BACKGROUND_NAMES.
const BACKGROUND = new Set(["background", "bg", "__background__", "_background_"]);

const $ = (id) => document.getElementById(id);
const state = { info: null, file: null, bitmap: null, orientation: 1, run: 0 };

class ApiError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.status = status;
  }
}

// ------------------------------------------------------------------------------------ the API
function authHeaders() {
  const token = $("token").value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function oneLine(text) {
  return String(text).replace(/\s+/g, " ").trim();
}

// A JSON answer of the API, or an ApiError whose message is the server's one-line message.
async function api(path, init = {}) {
  let response;
  try {
    response = await fetch(path, { ...init, headers: { ...authHeaders(), ...(init.headers || {}) } });
  } catch (err) {
    throw new ApiError(`Cannot reach the server (${err.message}).`);
  }
  let body = null;
  try {
    body = JSON.parse(await response.text());
  } catch {
    // not JSON: said below
  }
  if (!response.ok) {
    throw new ApiError(oneLine(body?.error?.message ?? `HTTP ${response.status} ${response.statusText}`),
      response.status);
  }
  if (body === null) throw new ApiError(`The server's answer to ${path} is not JSON.`);
  return { body, response };
}

// ------------------------------------------------------------------------------ page state
function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function setStatus(text) {
  $("status").textContent = text;
}

async function loadModels() {
  clearError();
  const select = $("model");
  const previous = select.value;
  setStatus("Loading the models…");
  try {
    const { body } = await api("v1/models");
    select.replaceChildren(...body.models.map((m) => new Option(`${m.name} (${m.task})`, m.name)));
    if (body.models.some((m) => m.name === previous)) select.value = previous;
    select.disabled = body.models.length === 0;
    $("token").classList.remove("needed");
    await selectModel();
  } catch (err) {
    select.replaceChildren();
    select.disabled = true;
    state.info = null;
    $("model-info").textContent = "";
    setStatus("");
    if (err.status === 401) {
      $("token").classList.add("needed");
      $("token").focus();
    }
    showError(err.message);
  }
}

async function selectModel() {
  const name = $("model").value;
  if (!name) return;
  const { body } = await api(`v1/models/${encodeURIComponent(name)}`);
  state.info = body;
  const [h, w] = body.card.input_size;
  const labels = body.card.class_names || [];
  $("model-info").textContent = `${body.task} · input ${w}×${h}` + (labels.length ? ` · ${labels.length} classes` : "");
  setStatus(state.file ? "" : "Choose an image.");
  if (state.file) await predict();
}

async function chooseFile(file) {
  state.file = file;
  state.bitmap?.close();
  try {
    state.bitmap = await createImageBitmap(file);
  } catch {
    state.bitmap = null; // the browser cannot show it; the server may still read it
  }
  state.orientation = await exifOrientation(file);
  const [w, h] = state.bitmap ? storedSize(state.bitmap, state.orientation) : [];
  const size = state.bitmap ? ` · ${w}×${h}` : "";
  const turned = state.orientation === 1 ? "" : " · as stored (the server does not apply the EXIF rotation)";
  $("image-info").textContent = `${file.name}${size}${turned}`;
  if (state.info) await predict();
}

// The EXIF orientation (1-8) of a JPEG; 1 for anything else. The browser shows a photo turned as
// its EXIF says, the server reads the stored pixels: the page draws what the server saw.
async function exifOrientation(file) {
  try {
    const view = new DataView(await file.slice(0, 256 * 1024).arrayBuffer());
    if (view.getUint16(0) !== 0xffd8) return 1;
    for (let at = 2; at + 4 <= view.byteLength; at += 2 + view.getUint16(at + 2)) {
      const marker = view.getUint16(at);
      if (marker === 0xffe1 && view.getUint32(at + 4) === 0x45786966) { // APP1 "Exif"
        const tiff = at + 10, little = view.getUint16(tiff) === 0x4949;
        const ifd = tiff + view.getUint32(tiff + 4, little);
        for (let i = 0; i < view.getUint16(ifd, little); i++) {
          const entry = ifd + 2 + i * 12;
          if (view.getUint16(entry, little) === 0x0112) return view.getUint16(entry + 8, little) || 1;
        }
        return 1;
      }
      if ((marker & 0xff00) !== 0xff00 || marker === 0xffda) return 1; // not a marker, or the pixels begin
    }
  } catch {
    // a truncated or odd header: as stored
  }
  return 1;
}

function storedSize(bitmap, orientation) {
  return orientation >= 5 ? [bitmap.height, bitmap.width] : [bitmap.width, bitmap.height];
}

// The transform taking the browser's EXIF-turned bitmap back to the stored w x h pixels.
function storedTransform(orientation, w, h) {
  return { 2: [-1, 0, 0, 1, w, 0], 3: [-1, 0, 0, -1, w, h], 4: [1, 0, 0, -1, 0, h], 5: [0, 1, 1, 0, 0, 0],
    6: [0, -1, 1, 0, 0, h], 7: [0, -1, -1, 0, w, h], 8: [0, 1, -1, 0, w, 0] }[orientation];
}

// ----------------------------------------------------------------------------------- predict
async function predict() {
  const { file, info, bitmap, orientation } = state;
  if (!file || !info) return;
  clearError();
  const run = ++state.run; // a newer request (another file or model) supersedes this one
  setStatus(`Asking ${info.name}…`);
  const query = new URLSearchParams({ top_k: String(TOP_K) });
  if (info.task === "segment") query.set("mask", "true");
  const started = performance.now();
  let answer;
  try {
    answer = await api(`v1/models/${encodeURIComponent(info.name)}:predict?${query}`, {
      method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" },
    });
  } catch (err) {
    if (run !== state.run) return;
    setStatus("");
    $("result").hidden = true;
    showError(err.message);
    return;
  }
  const roundTrip = performance.now() - started;
  if (run !== state.run) return;
  await render(answer.body.predictions[0], bitmap, orientation);
  $("latency").textContent = latencyText(answer.response.headers.get("Server-Timing"), roundTrip);
  setStatus("");
  $("result").dataset.answers = String(run);
}

function latencyText(serverTiming, roundTrip) {
  const match = /predict;dur=([\d.]+)/.exec(serverTiming || "");
  const server = match ? `server ${Number(match[1]).toFixed(1)} ms · ` : "";
  return `${server}round trip ${roundTrip.toFixed(1)} ms`;
}

// ------------------------------------------------------------------------------------ render
// As edgecnn.runtime.heads.draw.class_colour (colorsys.hsv_to_rgb of golden-ratio hue steps), so a
// class has the colour it has in `predict --save`.
function classColour(index) {
  const h = (index * 0.618033988749895) % 1, s = 0.85, v = 0.95;
  const i = Math.floor(h * 6), f = h * 6 - i;
  const p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f));
  const rgb = [[v, t, p], [q, v, p], [p, v, t], [p, q, v], [t, p, v], [v, p, q]][i % 6];
  return rgb.map((c) => Math.trunc(c * 255));
}

const css = ([r, g, b]) => `rgb(${r}, ${g}, ${b})`;

function span(className, text = "") {
  const el = document.createElement("span");
  el.className = className;
  el.textContent = text;
  return el;
}

function swatch(colour) {
  const el = span("swatch");
  if (colour) el.style.background = css(colour);
  else el.classList.add("unpainted");
  return el;
}

function drawStored(canvas, bitmap, orientation) {
  const ctx = canvas.getContext("2d");
  const turn = storedTransform(orientation, canvas.width, canvas.height);
  const swapped = orientation >= 5;
  if (turn && bitmap.width === (swapped ? canvas.height : canvas.width)
      && bitmap.height === (swapped ? canvas.width : canvas.height)) {
    ctx.setTransform(...turn);
    ctx.drawImage(bitmap, 0, 0);
    ctx.setTransform(1, 0, 0, 1, 0, 0);
  } else {
    ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  }
}

async function render(pred, bitmap, orientation) {
  for (const id of ["top-k", "detections", "legend", "outputs"]) {
    $(id).replaceChildren();
    $(id).hidden = true;
  }
  const seg = pred.segmentation;
  const size = pred.image_size || (seg && [seg.width, seg.height]) || (bitmap && storedSize(bitmap, orientation));
  const canvas = $("view");
  delete canvas.dataset.boxes;
  canvas.hidden = !bitmap;
  if (bitmap) {
    [canvas.width, canvas.height] = size; // the server's pixels: boxes and masks are in them
    drawStored(canvas, bitmap, orientation);
  }
  if (pred.top_k) renderTopK(pred.top_k);
  else if (pred.detections) renderDetections(bitmap ? canvas : null, pred.detections);
  else if (seg) await renderMask(bitmap ? canvas : null, seg);
  else renderOutputs(pred.outputs || []);
  $("result").hidden = false;
}

function renderTopK(topK) {
  const list = $("top-k");
  for (const p of topK) {
    const li = document.createElement("li");
    li.dataset.index = String(p.index);
    const bar = span("bar"), fill = span("fill");
    fill.style.width = `${Math.max(0, Math.min(1, p.probability)) * 100}%`;
    bar.append(fill);
    li.append(span("label", p.label), bar, span("score", `${(p.probability * 100).toFixed(1)}%`));
    list.append(li);
  }
  list.hidden = false;
  $("answer-title").textContent = topK.length ? topK[0].label : "No class";
}

function renderDetections(canvas, detections) {
  const list = $("detections");
  const ctx = canvas?.getContext("2d");
  const side = canvas ? Math.min(canvas.width, canvas.height) : 0;
  const line = Math.max(2, Math.round(side / 200)), font = Math.max(12, Math.round(side / 40));
  for (const d of detections) {
    const colour = classColour(d.index);
    const [x1, y1, x2, y2] = d.box;
    if (ctx) {
      ctx.lineWidth = line;
      ctx.strokeStyle = css(colour);
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      const text = `${d.label} ${d.score.toFixed(2)}`;
      ctx.font = `${font}px sans-serif`;
      const tw = ctx.measureText(text).width + 6, th = font + 4;
      const ty = y1 - th - line / 2 >= 0 ? y1 - th - line / 2 : y1 + line / 2; // above the box, else inside
      ctx.fillStyle = css(colour);
      ctx.fillRect(x1 - line / 2, ty, tw, th);
      ctx.fillStyle = colour[0] + colour[1] + colour[2] < 450 ? "#fff" : "#000";
      ctx.textBaseline = "top";
      ctx.fillText(text, x1 - line / 2 + 3, ty + 2);
    }
    const li = document.createElement("li");
    li.className = "detection";
    li.dataset.index = String(d.index);
    li.append(swatch(colour), span("label", d.label), span("score", d.score.toFixed(2)),
      span("box", d.box.map((v) => Math.round(v)).join(", ")));
    list.append(li);
  }
  if (canvas) canvas.dataset.boxes = String(detections.length);
  list.hidden = false;
  $("answer-title").textContent = `${detections.length} object${detections.length === 1 ? "" : "s"}`;
}

async function renderMask(canvas, seg) {
  const list = $("legend");
  const painted = new Map(); // class index -> its colour, for the classes painted over the image
  for (const c of seg.classes) {
    const colour = BACKGROUND.has(c.label.toLowerCase()) ? null : classColour(c.index);
    if (colour) painted.set(c.index, colour);
    const li = document.createElement("li");
    li.dataset.index = String(c.index);
    li.append(swatch(colour), span("label", c.label), span("score", `${(c.fraction * 100).toFixed(1)}%`));
    list.append(li);
  }
  list.hidden = false;
  $("answer-title").textContent = `${seg.classes.length} class${seg.classes.length === 1 ? "" : "es"}`;
  if (!canvas || !seg.mask_png) return;
  if ([...painted.keys()].some((i) => i > 255)) {
    const note = document.createElement("li");
    note.className = "note";
    note.textContent = "Not overlaid: the mask has more than 256 classes.";
    list.append(note);
    return;
  }
  const bytes = Uint8Array.from(atob(seg.mask_png), (c) => c.charCodeAt(0));
  // the PNG's values are class indices: read as they are, no colour management
  const mask = await createImageBitmap(new Blob([bytes], { type: "image/png" }),
    { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const scratch = document.createElement("canvas");
  [scratch.width, scratch.height] = [canvas.width, canvas.height];
  const sctx = scratch.getContext("2d", { willReadFrequently: true });
  sctx.drawImage(mask, 0, 0, canvas.width, canvas.height);
  mask.close();
  const classes = sctx.getImageData(0, 0, canvas.width, canvas.height).data;
  const ctx = canvas.getContext("2d");
  const image = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const px = image.data;
  for (let i = 0; i < px.length; i += 4) {
    const colour = painted.get(classes[i]);
    if (!colour) continue;
    px[i] = px[i] * (1 - ALPHA) + colour[0] * ALPHA;
    px[i + 1] = px[i + 1] * (1 - ALPHA) + colour[1] * ALPHA;
    px[i + 2] = px[i + 2] * (1 - ALPHA) + colour[2] * ALPHA;
  }
  ctx.putImageData(image, 0, 0);
}

function renderOutputs(outputs) {
  const list = $("outputs");
  for (const o of outputs) {
    const li = document.createElement("li");
    const stats = ["min", "max", "mean"].filter((k) => k in o).map((k) => `${k} ${Number(o[k]).toPrecision(4)}`);
    li.append(span("label", o.name), span("score", `[${(o.shape || []).join(", ")}] ${stats.join(" ")}`));
    list.append(li);
  }
  list.hidden = false;
  $("answer-title").textContent = "Raw outputs";
}

// ---------------------------------------------------------------------------------- wiring
function wire() {
  try {
    $("token").value = sessionStorage.getItem(TOKEN_KEY) ?? "";
  } catch {
    // storage disabled: the field starts empty
  }
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    try {
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      // storage disabled: the token lives in the field only
    }
    loadModels();
  });
  $("model").addEventListener("change", () => selectModel().catch((err) => showError(err.message)));
  $("file").addEventListener("change", () => {
    const file = $("file").files[0];
    if (file) chooseFile(file);
  });
  const drop = $("drop");
  // a file dropped anywhere else must not make the browser leave the page to open it
  for (const type of ["dragover", "drop"]) window.addEventListener(type, (event) => event.preventDefault());
  drop.addEventListener("dragover", () => drop.classList.add("over"));
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    drop.classList.remove("over");
    const file = event.dataTransfer?.files[0];
    if (file) chooseFile(file);
  });
  loadModels();
}

wire();
