#!/usr/bin/env node
// Run an edgecnn self-contained ONNX file (`edgecnn export ... --self-contained`) on PNG/JPEG images
// with onnxruntime-node, and print the answers as `edgecnn predict --json` prints them.
//
//   node predict.mjs model.self-contained.onnx cat.png dog.jpg [--top-k 3] [--conf 0.4] [--threads 2]
//
// The file does the preprocessing (uint8 RGB pixels in) and the post-processing (softmax/top-k,
// YOLO decoding + NMS, the mask's argmax) in its graph; this program only decodes the images, fits
// them to the input size the model card (in the file's ONNX metadata) names, runs the file, and
// names the classes. Exit status: 0 when every image was answered, 1 when one was not (its JSON
// entry has an "error") or the model cannot be used, 2 for a usage error.

import { existsSync, readFileSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import jpeg from 'jpeg-js';
import * as ort from 'onnxruntime-node';
import pngjs from 'pngjs';
import protobuf from 'protobufjs';

const USAGE = 'Usage: node predict.mjs MODEL.self-contained.onnx IMAGE... [--top-k K] [--conf C] [--threads N]';
const CARD_KEY = 'edgecnn.card';
const MAX_PIXELS = 50_000_000; // as edgecnn's runtime: refuse a decompression bomb before decoding it
const FITS = ['stretch', 'letterbox', 'keep-aspect'];

class UsageError extends Error {}

/** One line, whatever the error: a message's first line, at most 300 characters. */
function oneLine(err) {
  const text = String(err?.message ?? err).split('\n').map((s) => s.trim()).find((s) => s) ?? String(err);
  return text.length > 300 ? `${text.slice(0, 297)}...` : text;
}

// ------------------------------------------------------------------------------------ the model card

/** The edgecnn card (JSON) from the ONNX file's metadata_props, read with ONNX's protobuf schema. */
function readCard(bytes, path) {
  const schema = readFileSync(fileURLToPath(new URL('./onnx_metadata.proto', import.meta.url)), 'utf8');
  const ModelProto = protobuf.parse(schema, { keepCase: true }).root.lookupType('onnx.ModelProto');
  let model;
  try {
    model = ModelProto.decode(bytes);
  } catch (err) {
    throw new Error(`${path} is not an ONNX file (${oneLine(err)}).`);
  }
  const entry = (model.metadata_props ?? []).find((p) => p.key === CARD_KEY);
  if (!entry) {
    throw new Error(`${path} has no edgecnn model card in its metadata; run a file written by ` +
      '`edgecnn export SOURCE --self-contained` (<file>.self-contained.onnx).');
  }
  let card;
  try {
    card = JSON.parse(entry.value);
  } catch (err) {
    throw new Error(`${path}: its model card is not valid JSON (${oneLine(err)}).`);
  }
  if (card.self_contained !== true) {
    throw new Error(`${path} is not self-contained (its preprocessing is not in the file); run the ` +
      `${path.replace(/\.onnx$/, '')}.self-contained.onnx that \`edgecnn export --self-contained\` writes.`);
  }
  if (!['classify', 'detect', 'segment'].includes(card.task)) {
    throw new Error(`${path}: task "${card.task}" is not one this example answers (classify, detect, segment).`);
  }
  if (!FITS.includes(card.resize)) {
    throw new Error(`${path}: the card fits images by "${card.resize}", which this example does not implement ` +
      `(it does ${FITS.join(', ')}); use edgecnn's Python runtime for this model.`);
  }
  if (card.task === 'detect' && card.output_kind !== 'end2end') {
    throw new Error(`${path}: its detections come as "${card.output_kind}" outputs; this example reads the end2end ` +
      '[1, K, 6] rows that edgecnn writes for YOLO detectors.');
  }
  return card;
}

/** The outputs the file's task has (the card names them). */
function outputsOf(card) {
  return card.task === 'classify' ? ['probabilities', 'top_scores', 'top_classes'] : [card.output_name];
}

// ------------------------------------------------------------------------------------ image decoding

/** PNG or JPEG bytes -> { width, height, rgb } (alpha dropped, as edgecnn's runtime does). */
function decodeImage(path) {
  if (!existsSync(path) || !statSync(path).isFile()) {
    throw new Error(`Image ${path} does not exist.`);
  }
  const data = readFileSync(path);
  const isPng = data.length >= 8 && data.readUInt32BE(0) === 0x89504e47;
  const isJpeg = data.length >= 3 && data[0] === 0xff && data[1] === 0xd8 && data[2] === 0xff;
  if (!isPng && !isJpeg) {
    throw new Error(`Cannot read ${path} as an image; this example reads PNG and JPEG files.`);
  }
  if (isPng && data.length >= 24) { // IHDR's size, before decoding
    checkPixels(data.readUInt32BE(16), data.readUInt32BE(20), path);
  }
  let rgba;
  try {
    rgba = isPng ? pngjs.PNG.sync.read(data)
      : jpeg.decode(data, { useTArray: true, formatAsRGBA: true, maxResolutionInMP: MAX_PIXELS / 1e6 });
  } catch (err) {
    throw new Error(`Cannot read ${path} as an image (${oneLine(err)}).`);
  }
  const { width, height } = rgba;
  checkPixels(width, height, path);
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; j < rgb.length; i += 4, j += 3) {
    rgb[j] = rgba.data[i];
    rgb[j + 1] = rgba.data[i + 1];
    rgb[j + 2] = rgba.data[i + 2];
  }
  return { width, height, rgb };
}

function checkPixels(width, height, path) {
  if (width * height > MAX_PIXELS) {
    throw new Error(`Refusing ${path}: ${width}x${height} pixels is over the limit of ${MAX_PIXELS}; downscale it.`);
  }
}

// ------------------------------------------------------------------------------------ fitting

/** Python's round(): halves to even (the card's letterbox rounding is Ultralytics', in Python). */
function pyRound(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 ? 2 * Math.round(x / 2) : r;
}

// Pillow's resampling filters (support, kernel). A resize is Pillow's separable convolution (rows,
// then columns, each pass rounded to uint8) with its 22-bit fixed-point weights: close to Pillow's
// pixels, but not guaranteed equal to them.
const FILTERS = {
  bilinear: [1, (x) => (Math.abs(x) < 1 ? 1 - Math.abs(x) : 0)],
  bicubic: [2, (x) => {
    const a = -0.5;
    const t = Math.abs(x);
    if (t < 1) return ((a + 2) * t - (a + 3)) * t * t + 1;
    if (t < 2) return (((t - 5) * t + 8) * t - 4) * a;
    return 0;
  }],
  lanczos: [3, (x) => {
    const sinc = (v) => (v === 0 ? 1 : Math.sin(Math.PI * v) / (Math.PI * v));
    return x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0;
  }],
};
const PRECISION_BITS = 22;
const ONE = 2 ** PRECISION_BITS;

/** The fixed-point weights of each output pixel along one axis: [first source index, weights]. */
function weights(inSize, outSize, filter) {
  const [support0, kernel] = filter;
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = support0 * filterScale;
  const out = [];
  for (let i = 0; i < outSize; i++) {
    const center = (i + 0.5) * scale;
    const lo = Math.max(0, Math.trunc(center - support + 0.5));
    const hi = Math.min(inSize, Math.trunc(center + support + 0.5));
    const w = [];
    let sum = 0;
    for (let j = lo; j < hi; j++) {
      const v = kernel((j - center + 0.5) / filterScale);
      w.push(v);
      sum += v;
    }
    out.push([lo, w.map((v) => {
      const n = sum ? v / sum : 0;
      return Math.trunc(n < 0 ? -0.5 + n * ONE : 0.5 + n * ONE);
    })]);
  }
  return out;
}

/** One resampling pass along x (horizontal) or y, uint8 in and out. */
function pass(src, sw, sh, c, dw, dh, ws, horizontal) {
  const out = new Uint8Array(dw * dh * c);
  for (let y = 0; y < dh; y++) {
    for (let x = 0; x < dw; x++) {
      const [lo, w] = ws[horizontal ? x : y];
      for (let k = 0; k < c; k++) {
        let acc = ONE / 2;
        for (let t = 0; t < w.length; t++) {
          acc += w[t] * src[(horizontal ? y * sw + lo + t : (lo + t) * sw + x) * c + k];
        }
        out[(y * dw + x) * c + k] = Math.min(255, Math.max(0, Math.floor(acc / ONE)));
      }
    }
  }
  return out;
}

/** Resize interleaved uint8 pixels (c channels) from sw x sh to dw x dh. */
function resize(src, sw, sh, c, dw, dh, resample) {
  const filter = FILTERS[resample];
  if (!filter) {
    throw new Error(`the card resamples with "${resample}", which this example does not implement (it does ` +
      `${Object.keys(FILTERS).join(', ')}); give images at the model's input size.`);
  }
  const wide = dw === sw ? src : pass(src, sw, sh, c, dw, sh, weights(sw, dw, filter), true);
  return dh === sh ? wide : pass(wide, dw, sh, c, dw, dh, weights(sh, dh, filter), false);
}

/** RGB -> gray as Pillow's convert("L") (ITU-R 601-2 luma), or the card's "average" rule. */
function toGray(rgb, rule) {
  const out = new Uint8Array(rgb.length / 3);
  for (let i = 0; i < out.length; i++) {
    const [r, g, b] = [rgb[3 * i], rgb[3 * i + 1], rgb[3 * i + 2]];
    out[i] = rule === 'average' ? Math.floor((r + g + b + 1) / 3) : (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
  }
  return out;
}

/**
 * The image at the card's input size as the card says (stretch, letterbox or keep-aspect), and how:
 * model_xy = original_xy * scale + pad. An image already at the input size is used as it is.
 */
function fit(image, card) {
  const [H, W] = card.input_size;
  const c = card.channels === 1 ? 1 : 3;
  const px = c === 1 ? toGray(image.rgb, card.gray) : image.rgb;
  const { width: w, height: h } = image;
  if (card.resize === 'stretch') {
    const info = { width: w, height: h, sx: W / w, sy: H / h, padX: 0, padY: 0 };
    return { pixels: w === W && h === H ? px : resize(px, w, h, c, W, H, card.resample), info };
  }
  const scale = Math.min(H / h, W / w);
  let nw, nh, at;
  if (card.resize === 'letterbox') { // Ultralytics' rounding, centred
    [nw, nh] = [Math.max(1, pyRound(w * scale)), Math.max(1, pyRound(h * scale))];
    at = [Math.trunc(pyRound((W - nw) / 2 - 0.1)), Math.trunc(pyRound((H - nh) / 2 - 0.1))];
  } else { // keep-aspect: sides truncated, at the top left (YOLOX)
    [nw, nh] = [Math.max(1, Math.trunc(w * scale)), Math.max(1, Math.trunc(h * scale))];
    at = [0, 0];
  }
  const inner = nw === w && nh === h ? px : resize(px, w, h, c, nw, nh, card.resample);
  const pixels = new Uint8Array(W * H * c).fill(card.pad_value ?? 114);
  for (let y = 0; y < nh; y++) {
    pixels.set(inner.subarray(y * nw * c, (y + 1) * nw * c), ((y + at[1]) * W + at[0]) * c);
  }
  return { pixels, info: { width: w, height: h, sx: scale, sy: scale, padX: at[0], padY: at[1] } };
}

// ------------------------------------------------------------------------------------ answers

function label(card, index) {
  return card.class_names?.[index] ?? String(index);
}

function classify(card, out, topK) {
  const k = Math.min(topK, out.probabilities.dims[1]);
  if (k <= out.top_classes.dims[1]) { // the file's own TopK, best first
    return { top_k: Array.from({ length: k }, (_, i) => {
      const index = Number(out.top_classes.data[i]);
      return { label: label(card, index), index, probability: out.top_scores.data[i] };
    }) };
  }
  const probs = Array.from(out.probabilities.data);
  const order = probs.map((p, i) => i).sort((a, b) => probs[b] - probs[a] || a - b).slice(0, k);
  return { top_k: order.map((index) => ({ label: label(card, index), index, probability: probs[index] })) };
}

/**
 * The rows of an end2end output [1, K, 6] (x1, y1, x2, y2, score, class; zero rows pad it) scoring
 * above `conf`, best first, boxes on the original image.
 */
function detect(card, out, info, conf) {
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

/**
 * The class map sampled back onto the original image and each class's share of it. The part of the
 * map that shows the image (inside a letterbox's padding) is resized with nearest-neighbour sampling
 * as Pillow does it (a float32 box, source positions accumulated step by step), as edgecnn does.
 */
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
      const cls = my < 0 || mx < 0 ? 0 : Number(map.data[my * mw + mx]); // outside the map: 0, as Pillow fills
      counts.set(cls, (counts.get(cls) ?? 0) + 1);
    }
  }
  const total = info.width * info.height;
  const classes = [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0] - b[0]).map(([index, n]) => (
    { label: label(card, index), index, fraction: Math.round((n / total) * 1e6) / 1e6 }));
  return { segmentation: { width: info.width, height: info.height, classes } };
}

// ------------------------------------------------------------------------------------ main

function parse(argv) {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, allowPositionals: true, options: {
      'top-k': { type: 'string', short: 'k', default: '5' },
      conf: { type: 'string', default: '0.25' },
      threads: { type: 'string' }, // default: onnxruntime's (one per core)
      help: { type: 'boolean', short: 'h', default: false },
    } });
  } catch (err) {
    throw new UsageError(oneLine(err));
  }
  const { values, positionals } = parsed;
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const topK = Number(values['top-k']);
  const threads = values.threads === undefined ? undefined : Number(values.threads);
  const conf = Number(values.conf);
  if (!Number.isInteger(topK) || topK < 1) {
    throw new UsageError(`--top-k must be a whole number >= 1, got "${values['top-k']}".`);
  }
  if (threads !== undefined && (!Number.isInteger(threads) || threads < 1)) {
    throw new UsageError(`--threads must be a whole number >= 1, got "${values.threads}".`);
  }
  if (!(conf >= 0 && conf <= 1)) throw new UsageError(`--conf must be a number in 0-1, got "${values.conf}".`);
  if (positionals.length < 2) throw new UsageError('give a model file and at least one image.');
  const [model, ...images] = positionals;
  if (!existsSync(model) || !statSync(model).isFile()) throw new UsageError(`model ${model} does not exist.`);
  return { model, images, topK, threads, conf };
}

async function main() {
  const args = parse(process.argv.slice(2));
  const bytes = readFileSync(args.model);
  const card = readCard(bytes, args.model);
  let session;
  try {
    const threads = args.threads === undefined ? {} : { intraOpNumThreads: args.threads, interOpNumThreads: 1 };
    session = await ort.InferenceSession.create(bytes, threads);
  } catch (err) {
    throw new Error(`onnxruntime-node cannot load ${args.model} (${oneLine(err)}).`);
  }
  const missing = outputsOf(card).filter((name) => !session.outputNames.includes(name));
  if (missing.length) {
    throw new Error(`${args.model} has no output ${missing.join(', ')} (it has ${session.outputNames.join(', ')}); ` +
      'is it a file `edgecnn export --self-contained` wrote?');
  }
  const [H, W] = card.input_size;
  const channels = card.channels === 1 ? 1 : 3;
  const predictions = [];
  for (const path of args.images) { // one image per call: a self-contained detector takes one at a time
    try {
      const { pixels, info } = fit(decodeImage(path), card);
      const out = await session.run({ pixels: new ort.Tensor('uint8', pixels, [1, H, W, channels]) });
      const answer = card.task === 'classify' ? classify(card, out, args.topK)
        : card.task === 'detect' ? detect(card, out, info, args.conf) : segment(card, out, info);
      predictions.push({ image: path, ...answer });
    } catch (err) {
      predictions.push({ image: path, error: oneLine(err) });
    }
  }
  const runtime = `onnxruntime-node ${ort.env.versions?.node ?? ''}`.trim();
  console.log(JSON.stringify({ model: args.model, task: card.task, runtime, predictions }, null, 2));
  const failed = predictions.filter((p) => p.error);
  for (const p of failed) console.error(`Error: ${p.error}`);
  return failed.length ? 1 : 0;
}

main().then((code) => { process.exitCode = code; }, (err) => {
  console.error(err instanceof UsageError ? `Error: ${oneLine(err)} (${USAGE})` : `Error: ${oneLine(err)}`);
  process.exitCode = err instanceof UsageError ? 2 : 1;
});
