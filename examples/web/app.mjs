// Run an edgecnn self-contained ONNX file (`edgecnn export ... --self-contained`) in the browser with
// onnxruntime-web's WebAssembly backend: pick the file and images, see the JSON `edgecnn predict --json`
// prints, the top-1 class or the boxes drawn on each image.
//
// The file does the preprocessing (uint8 RGB pixels in) and the post-processing (softmax/top-k,
// YOLO decoding + NMS, the mask's argmax) in its graph; this page decodes each image with the
// browser (canvas getImageData), fits it to the input size the model card (in the file's ONNX
// metadata) names, runs the file, and names the classes. No build step: onnxruntime-web's files are
// served from its npm package (node_modules/onnxruntime-web/dist), next to this page.

import * as ort from './node_modules/onnxruntime-web/dist/ort.wasm.min.mjs';

const protobuf = globalThis.protobuf; // node_modules/protobufjs/dist/protobuf.min.js, loaded by index.html
const CARD_KEY = 'edgecnn.card';
const MAX_PIXELS = 50_000_000; // as edgecnn's runtime
const FITS = ['stretch', 'letterbox', 'keep-aspect'];
const COLOURS = ['#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#42d4f4', '#f032e6', '#9a6324'];

// Threads need SharedArrayBuffer, which only a cross-origin isolated page has (COOP/COEP headers).
ort.env.wasm.numThreads = globalThis.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;

const $ = (id) => document.getElementById(id);
let model = null; // { name, card, session }
let run = 0; // the latest request: an older one that finishes later is not shown

/** One line, whatever the error: a message's first line, at most 300 characters. */
function oneLine(err) {
  const text = String(err?.message ?? err).split('\n').map((s) => s.trim()).find((s) => s) ?? String(err);
  return text.length > 300 ? `${text.slice(0, 297)}...` : text;
}

function status(state, text) {
  $('status').dataset.state = state;
  $('status').textContent = text;
}

// ------------------------------------------------------------------------------------ the model card

/** The edgecnn card (JSON) from the ONNX file's metadata_props, read with ONNX's protobuf schema. */
async function readCard(bytes, name) {
  const schema = await (await fetch('onnx_metadata.proto')).text();
  const ModelProto = protobuf.parse(schema, { keepCase: true }).root.lookupType('onnx.ModelProto');
  let proto;
  try {
    proto = ModelProto.decode(bytes);
  } catch (err) {
    throw new Error(`${name} is not an ONNX file (${oneLine(err)}).`);
  }
  const entry = (proto.metadata_props ?? []).find((p) => p.key === CARD_KEY);
  if (!entry) {
    throw new Error(`${name} has no edgecnn model card in its metadata; pick a file written by ` +
      '`edgecnn export SOURCE --self-contained` (<file>.self-contained.onnx).');
  }
  let card;
  try {
    card = JSON.parse(entry.value);
  } catch (err) {
    throw new Error(`${name}: its model card is not valid JSON (${oneLine(err)}).`);
  }
  if (card.self_contained !== true) {
    throw new Error(`${name} is not self-contained (its preprocessing is not in the file); pick the ` +
      '<file>.self-contained.onnx that `edgecnn export --self-contained` writes beside it.');
  }
  if (!['classify', 'detect', 'segment'].includes(card.task)) {
    throw new Error(`${name}: task "${card.task}" is not one this page answers (classify, detect, segment).`);
  }
  if (!FITS.includes(card.resize)) {
    throw new Error(`${name}: the card fits images by "${card.resize}", which this page does not implement ` +
      `(it does ${FITS.join(', ')}).`);
  }
  if (card.task === 'detect' && card.output_kind !== 'end2end') {
    throw new Error(`${name}: its detections come as "${card.output_kind}" outputs; this page reads the end2end ` +
      '[1, K, 6] rows that edgecnn writes for YOLO detectors.');
  }
  return card;
}

function outputsOf(card) {
  return card.task === 'classify' ? ['probabilities', 'top_scores', 'top_classes'] : [card.output_name];
}

async function loadModel(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  const card = await readCard(bytes, file.name);
  let session;
  try {
    session = await ort.InferenceSession.create(bytes, { executionProviders: ['wasm'] });
  } catch (err) {
    throw new Error(`onnxruntime-web cannot load ${file.name} (${oneLine(err)}).`);
  }
  const missing = outputsOf(card).filter((name) => !session.outputNames.includes(name));
  if (missing.length) {
    throw new Error(`${file.name} has no output ${missing.join(', ')}; is it a file \`edgecnn export ` +
      '--self-contained` wrote?');
  }
  return { name: file.name, card, session };
}

// ------------------------------------------------------------------------------------ images

/** A PNG/JPEG file -> { bitmap, width, height, rgba } decoded by the browser, no colour conversion. */
async function decodeImage(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  } catch {
    throw new Error(`Cannot read ${file.name} as an image; pick PNG or JPEG files.`);
  }
  const { width, height } = bitmap;
  if (width * height > MAX_PIXELS) {
    throw new Error(`Refusing ${file.name}: ${width}x${height} pixels is over the limit of ${MAX_PIXELS}.`);
  }
  const ctx = new OffscreenCanvas(width, height).getContext('2d', { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  return { bitmap, width, height, rgba: ctx.getImageData(0, 0, width, height).data };
}

/** Python's round(): halves to even (the card's letterbox rounding is Ultralytics', in Python). */
function pyRound(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 ? 2 * Math.round(x / 2) : r;
}

/**
 * Where the image goes on the model input (stretch, letterbox or keep-aspect, as the card says):
 * model_xy = original_xy * scale + pad.
 */
function placement(width, height, card) {
  const [H, W] = card.input_size;
  if (card.resize === 'stretch') return { nw: W, nh: H, at: [0, 0], sx: W / width, sy: H / height };
  const scale = Math.min(H / height, W / width);
  if (card.resize === 'letterbox') { // Ultralytics' rounding, centred
    const [nw, nh] = [Math.max(1, pyRound(width * scale)), Math.max(1, pyRound(height * scale))];
    return { nw, nh, at: [pyRound((W - nw) / 2 - 0.1), pyRound((H - nh) / 2 - 0.1)], sx: scale, sy: scale };
  }
  const [nw, nh] = [Math.max(1, Math.trunc(width * scale)), Math.max(1, Math.trunc(height * scale))];
  return { nw, nh, at: [0, 0], sx: scale, sy: scale }; // keep-aspect: top left (YOLOX)
}

/**
 * The image as the model's uint8 NHWC input and how it was fitted. An image at the input size is
 * used pixel for pixel; another is resized by the canvas (the browser's filter, not Pillow's).
 */
function fit(image, card) {
  const [H, W] = card.input_size;
  const { nw, nh, at, sx, sy } = placement(image.width, image.height, card);
  let rgba = image.rgba;
  if (nw !== image.width || nh !== image.height || nw !== W || nh !== H) {
    const ctx = new OffscreenCanvas(W, H).getContext('2d', { willReadFrequently: true });
    const pad = card.pad_value ?? 114;
    ctx.fillStyle = `rgb(${pad}, ${pad}, ${pad})`;
    ctx.fillRect(0, 0, W, H);
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = 'high';
    if (nw === image.width && nh === image.height) {
      ctx.putImageData(new ImageData(image.rgba, image.width, image.height), at[0], at[1]);
    } else {
      ctx.drawImage(image.bitmap, at[0], at[1], nw, nh);
    }
    rgba = ctx.getImageData(0, 0, W, H).data;
  }
  const channels = card.channels === 1 ? 1 : 3;
  const pixels = new Uint8Array(W * H * channels);
  for (let i = 0; i < W * H; i++) {
    const [r, g, b] = [rgba[4 * i], rgba[4 * i + 1], rgba[4 * i + 2]];
    if (channels === 3) {
      pixels.set([r, g, b], 3 * i);
    } else { // Pillow's convert("L") (ITU-R 601-2 luma), or the card's "average" rule
      pixels[i] = card.gray === 'average' ? Math.floor((r + g + b + 1) / 3)
        : (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
    }
  }
  return { pixels, info: { width: image.width, height: image.height, sx, sy, padX: at[0], padY: at[1] } };
}

// ------------------------------------------------------------------------------------ answers

function label(card, index) {
  return card.class_names?.[index] ?? String(index);
}

function classify(card, out, topK = 5) {
  const k = Math.min(topK, out.top_classes.dims[1]);
  return { top_k: Array.from({ length: k }, (_, i) => {
    const index = Number(out.top_classes.data[i]);
    return { label: label(card, index), index, probability: out.top_scores.data[i] };
  }) };
}

/** The end2end rows [1, K, 6] (zero rows pad them) scoring above `conf`, boxes on the original image. */
function detect(card, out, info, conf = 0.25) {
  const rows = out[card.output_name];
  const [H, W] = card.input_size;
  const kept = [];
  for (let i = 0; i < rows.dims[1]; i++) {
    const [x1, y1, x2, y2, score, cls] = rows.data.subarray(6 * i, 6 * i + 6);
    if (score > conf && [x1, y1, x2, y2, score].every(Number.isFinite) && cls >= 0) {
      kept.push({ box: [x1, y1, x2, y2], score, index: Math.round(cls) });
    }
  }
  if (kept.length && Math.max(...kept.flatMap((d) => d.box.map(Math.abs))) <= 1.5) { // normalized (0-1)
    for (const d of kept) d.box = [d.box[0] * W, d.box[1] * H, d.box[2] * W, d.box[3] * H];
  }
  kept.sort((a, b) => b.score - a.score);
  const clip = (v, hi) => Math.min(hi, Math.max(0, v));
  const round2 = (v) => Math.round(v * 100) / 100;
  const detections = kept.map(({ box: [x1, y1, x2, y2], score, index }) => ({
    label: label(card, index), index, score, box: [
      round2(clip((x1 - info.padX) / info.sx, info.width)), round2(clip((y1 - info.padY) / info.sy, info.height)),
      round2(clip((x2 - info.padX) / info.sx, info.width)), round2(clip((y2 - info.padY) / info.sy, info.height)),
    ] }));
  return { detections, image_size: [info.width, info.height] };
}

/** The class map sampled back onto the original image (nearest, as Pillow), each class's share of it. */
function segment(card, out, info) {
  const map = out[card.output_name];
  const [mh, mw] = map.dims.slice(1);
  const [H, W] = card.input_size;
  const f = Math.fround;
  const [sx, sy] = [mw / W, mh / H];
  const box = [f(info.padX * sx), f(info.padY * sy), f((info.padX + info.width * info.sx) * sx),
    f((info.padY + info.height * info.sy) * sy)];
  const positions = (start, end, n, size) => {
    const step = f(end - start) / n;
    const at = new Int32Array(n);
    let v = start + step * 0.5;
    for (let i = 0; i < n; i++, v += step) at[i] = v < 0 || Math.trunc(v) >= size ? -1 : Math.trunc(v);
    return at;
  };
  const xs = positions(box[0], box[2], info.width, mw);
  const ys = positions(box[1], box[3], info.height, mh);
  const counts = new Map();
  for (const my of ys) {
    for (const mx of xs) {
      const cls = my < 0 || mx < 0 ? 0 : Number(map.data[my * mw + mx]);
      counts.set(cls, (counts.get(cls) ?? 0) + 1);
    }
  }
  const total = info.width * info.height;
  const classes = [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0] - b[0]).map(([index, n]) => (
    { label: label(card, index), index, fraction: Math.round((n / total) * 1e6) / 1e6 }));
  return { segmentation: { width: info.width, height: info.height, classes } };
}

async function predict(file) {
  const { card, session } = model;
  const image = await decodeImage(file);
  const { pixels, info } = fit(image, card);
  const [H, W] = card.input_size;
  const input = new ort.Tensor('uint8', pixels, [1, H, W, card.channels === 1 ? 1 : 3]);
  const out = await session.run({ [card.input_name ?? 'pixels']: input });
  const answer = card.task === 'classify' ? classify(card, out) : card.task === 'detect' ? detect(card, out, info)
    : segment(card, out, info);
  return { image, answer };
}

// ------------------------------------------------------------------------------------ the page

/** One image with its answer: the top-1 class, the boxes drawn, or the classes present. */
function figure(name, image, answer) {
  const fig = document.createElement('figure');
  const caption = document.createElement('figcaption');
  if (!answer || answer.error) {
    fig.className = 'error';
    caption.textContent = `${name}: ${answer?.error}`;
    fig.append(caption);
    return fig;
  }
  const canvas = document.createElement('canvas');
  [canvas.width, canvas.height] = [image.width, image.height];
  const zoom = Math.max(1, Math.floor(128 / Math.max(image.width, image.height)));
  canvas.style.width = `${image.width * zoom}px`;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(image.bitmap, 0, 0);
  if (answer.top_k) {
    const best = answer.top_k[0];
    caption.textContent = `${best.label} ${best.probability.toFixed(2)}`;
  } else if (answer.detections) {
    ctx.lineWidth = Math.max(1, image.width / 160);
    const size = Math.max(9, Math.round(image.width / 16));
    ctx.font = `${size}px sans-serif`;
    ctx.textBaseline = 'top';
    for (const d of answer.detections) {
      const [x1, y1, x2, y2] = d.box;
      const text = `${d.label} ${d.score.toFixed(2)}`;
      const ty = y1 >= size + 2 ? y1 - size - 2 : y1; // above the box, or inside it at the top
      ctx.strokeStyle = ctx.fillStyle = COLOURS[d.index % COLOURS.length];
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      ctx.fillRect(x1, ty, ctx.measureText(text).width + 4, size + 2);
      ctx.fillStyle = '#fff';
      ctx.fillText(text, x1 + 2, ty + 1);
    }
    caption.textContent = `${answer.detections.length} box${answer.detections.length === 1 ? '' : 'es'}`;
  } else {
    caption.textContent = answer.segmentation.classes.slice(0, 3)
      .map((c) => `${c.label} ${(100 * c.fraction).toFixed(1)}%`).join(', ');
  }
  fig.dataset.image = name;
  fig.append(canvas, caption);
  return fig;
}

async function answerImages() {
  const files = [...$('images').files];
  if (!model || !files.length) return;
  const mine = ++run;
  status('running', `Running ${model.name} on ${files.length} image(s)...`);
  $('gallery').replaceChildren();
  const predictions = [];
  const figures = [];
  const started = performance.now();
  for (const file of files) {
    let image = null;
    let answer;
    try {
      ({ image, answer } = await predict(file));
      predictions.push({ image: file.name, ...answer });
    } catch (err) {
      answer = { error: oneLine(err) };
      predictions.push({ image: file.name, ...answer });
    }
    if (mine !== run) return;
    figures.push(figure(file.name, image, answer));
  }
  const ms = performance.now() - started;
  $('gallery').replaceChildren(...figures);
  const runtime = `onnxruntime-web ${ort.env.versions?.web ?? ''} (wasm, ${ort.env.wasm.numThreads} thread)`;
  $('json').textContent = JSON.stringify({ model: model.name, task: model.card.task, runtime, predictions }, null, 2);
  const failed = predictions.filter((p) => p.error).length;
  status(failed ? 'error' : 'done', `${files.length} image(s) in ${ms.toFixed(0)} ms` +
    (failed ? `; ${failed} could not be answered (see their "error")` : '.'));
}

$('model').addEventListener('change', async () => {
  const file = $('model').files[0];
  if (!file) return;
  const mine = ++run;
  model = null;
  $('json').textContent = '';
  $('gallery').replaceChildren();
  status('loading', `Loading ${file.name}...`);
  try {
    const loaded = await loadModel(file);
    if (mine !== run) return;
    model = loaded;
    const [H, W] = model.card.input_size;
    status('ready', `${model.card.name}: ${model.card.task}, ${W}x${H} input, ${model.card.precision}. Pick images.`);
    await answerImages();
  } catch (err) {
    if (mine === run) status('error', `Error: ${oneLine(err)}`);
  }
});

$('images').addEventListener('change', () => {
  answerImages().catch((err) => status('error', `Error: ${oneLine(err)}`));
});
