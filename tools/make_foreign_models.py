"""Make the small "foreign" ONNX test models in tests/data/foreign/ with the tools that make them for real.

Run with a separate virtual environment that has the foreign tools (never edgecnn's own)::

    python3 -m venv /work/foreign-venv
    /work/foreign-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 ultralytics onnx onnxslim onnxruntime
    /work/foreign-venv/bin/python tools/make_foreign_models.py --out tests/data/foreign

It writes, with no download (random initialisation, then a short training on synthetic images the
script draws itself, so that the models see and answer something):

* ``yolov8_shapes.onnx``: a YOLOv8 detector built by ``ultralytics`` from its own
  ``cfg/models/v8/yolov8.yaml`` (3 classes; the ``n`` scale with width 0.125 and at most 256 channels so the file stays
  small), trained a few epochs on coloured rectangles and exported with Ultralytics'
  ``model.export(format="onnx")``: output ``[1, 4 + 3, A]`` and Ultralytics' ``metadata_props``
  (``imgsz``, ``names``, ``stride``, ``task``).
* ``yolov5layout_shapes.onnx``: the same graph with its output rewritten by an ONNX graph edit
  to the YOLOv5 layout ``[1, A, 5 + 3]`` (transposed, objectness fixed at 1.0). Not a YOLOv5
  network: a file to test the ``[N, A, 5 + C]`` decoding against the v8 one.
* ``lraspp_shapes.onnx``: torchvision's LR-ASPP segmentation head on torchvision's
  MobileNetV3-Small backbone at width 0.5 (``lraspp_mobilenet_v3_large``'s builder with the small
  backbone: the large one is 12 MB in float32), 4 classes (background + 3 colours), trained
  briefly on the same kind of images, exported with ``torch.onnx.export`` (dynamic batch) and
  simplified with ``onnxslim``, its output shape then filled in by ONNX shape inference (data
  propagation): output logits ``[N, 4, 128, 128]``.

This file is a development tool: edgecnn never imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 70, 230)}
DET_SIZE = 160
SEG_SIZE = 128
SEED = 0


# --------------------------------------------------------------------------- synthetic images
def draw_scene(rng: np.random.Generator, size: int, max_boxes: int = 3) -> tuple[np.ndarray, list, np.ndarray]:
    """A noisy grey-ish background with 1..max_boxes filled coloured rectangles.

    Returns the uint8 HxWx3 image, the boxes as (class, x1, y1, x2, y2) in pixels, and the
    per-pixel class map (0 background, 1 + colour index).
    """
    base = rng.integers(60, 180, size=3)
    img = np.clip(base + rng.normal(0, 18, size=(size, size, 3)), 0, 255).astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    boxes = []
    for _ in range(int(rng.integers(1, max_boxes + 1))):
        cls = int(rng.integers(0, len(COLOURS)))
        w, h = (int(v) for v in rng.integers(size // 8, size // 2, size=2))
        x1, y1 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
        colour = np.asarray(list(COLOURS.values())[cls]) + rng.integers(-20, 21, size=3)
        img[y1:y1 + h, x1:x1 + w] = np.clip(colour, 0, 255)
        mask[y1:y1 + h, x1:x1 + w] = cls + 1
        boxes.append((cls, x1, y1, x1 + w, y1 + h))
    return img, boxes, mask


def write_yolo_dataset(root: Path, rng: np.random.Generator, n_train: int, n_val: int) -> Path:
    """Images plus YOLO txt labels (class cx cy w h, normalised) and the dataset yaml."""
    from PIL import Image

    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            img, boxes, mask = draw_scene(rng, DET_SIZE)
            Image.fromarray(img).save(root / "images" / split / f"{i:04d}.png")
            lines = []
            for cls, x1, y1, x2, y2 in boxes:
                # Later rectangles may cover earlier ones: label only what is still visible.
                visible = mask[y1:y2, x1:x2] == cls + 1
                if visible.mean() < 0.5:
                    continue
                cx, cy = (x1 + x2) / 2 / DET_SIZE, (y1 + y2) / 2 / DET_SIZE
                lines.append(f"{cls} {cx:.6f} {cy:.6f} {(x2 - x1) / DET_SIZE:.6f} {(y2 - y1) / DET_SIZE:.6f}")
            (root / "labels" / split / f"{i:04d}.txt").write_text("\n".join(lines) + "\n")
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(COLOURS))
    data = root / "shapes.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return data


# --------------------------------------------------------------------------- YOLOv8 (ultralytics)
def model_yaml(root: Path) -> Path:
    """Ultralytics' own yolov8.yaml with nc=3 and the ``n`` scale narrowed to width 0.125, at most 256 channels."""
    import ultralytics
    import yaml

    src = Path(ultralytics.__file__).parent / "cfg" / "models" / "v8" / "yolov8.yaml"
    cfg = yaml.safe_load(src.read_text())
    cfg["nc"] = len(COLOURS)
    cfg["scales"] = {"n": [0.33, 0.125, 256]}
    out = root / "yolov8n.yaml"  # the name makes ultralytics pick the "n" scale
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def make_yolov8(out_dir: Path, work: Path, epochs: int) -> Path:
    import torch
    from ultralytics import YOLO

    torch.manual_seed(SEED)
    data = write_yolo_dataset(work / "shapes", np.random.default_rng(SEED), n_train=160, n_val=24)
    model = YOLO(str(model_yaml(work)))
    t0 = time.perf_counter()
    model.train(data=str(data), epochs=epochs, imgsz=DET_SIZE, batch=16, workers=0, device="cpu", plots=False,
                amp=False, project=str(work / "runs"), name="train", seed=SEED, deterministic=True, mosaic=0.0,
                close_mosaic=0, fliplr=0.5, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, translate=0.1, scale=0.2,
                warmup_epochs=1, val=False, verbose=False, lr0=0.01, cos_lr=False, patience=0)
    print(f"yolov8 training: {time.perf_counter() - t0:.0f} s")
    best = work / "runs" / "train" / "weights" / "last.pt"
    trained = YOLO(str(best))
    metrics = trained.val(data=str(data), imgsz=DET_SIZE, batch=8, device="cpu", plots=False, verbose=False,
                          workers=0, project=str(work / "runs"), name="val")
    print(f"yolov8 val mAP@0.5 on the synthetic val split: {metrics.box.map50:.3f}")
    onnx_path = Path(trained.export(format="onnx", imgsz=DET_SIZE, opset=17, simplify=True, dynamic=False,
                                    device="cpu"))
    target = out_dir / "yolov8_shapes.onnx"
    shutil.copyfile(onnx_path, target)
    return target


def make_yolov5_layout(v8_path: Path, out_dir: Path) -> Path:
    """Rewrite the v8 output [1, 4 + C, A] into the v5 layout [1, A, 5 + C] with objectness 1."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(v8_path))
    graph = model.graph
    old = graph.output[0]
    dims = [d.dim_value for d in old.type.tensor_type.shape.dim]  # [1, 4 + C, A]
    n, channels, anchors = dims
    nc = channels - 4
    tail = old.name
    for node in graph.node:  # rename the producer's output; the new tail gets the public name
        node.output[:] = [f"{tail}_v8" if o == tail else o for o in node.output]
    graph.initializer.extend([
        numpy_helper.from_array(np.array([4, nc], np.int64), "v5_split"),
        numpy_helper.from_array(np.ones((n, anchors, 1), np.float32), "v5_objectness"),
    ])
    graph.node.extend([
        helper.make_node("Transpose", [f"{tail}_v8"], ["v5_t"], perm=[0, 2, 1], name="v5_transpose"),
        helper.make_node("Split", ["v5_t", "v5_split"], ["v5_box", "v5_cls"], axis=2, name="v5_split"),
        helper.make_node("Concat", ["v5_box", "v5_objectness", "v5_cls"], [tail], axis=2, name="v5_concat"),
    ])
    graph.output.remove(old)
    graph.output.append(helper.make_tensor_value_info(tail, TensorProto.FLOAT, [n, anchors, 5 + nc]))
    meta = {p.key: p.value for p in model.metadata_props}
    meta["description"] = ("YOLOv8 graph with its output edited to the YOLOv5 layout [N, A, 5+C] "
                           "(objectness 1.0) by edgecnn tools/make_foreign_models.py")
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    target = out_dir / "yolov5layout_shapes.onnx"
    onnx.save(model, str(target))
    return target


# --------------------------------------------------------------------------- LR-ASPP (torchvision)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def make_lraspp(out_dir: Path, steps: int) -> Path:
    import torch
    from torchvision.models import mobilenet_v3_small
    from torchvision.models.segmentation.lraspp import _lraspp_mobilenetv3

    torch.manual_seed(SEED)
    # lraspp_mobilenet_v3_large(weights=None, weights_backbone=None) does exactly this with the
    # large backbone (12 MB in float32); the small one at width 0.5 keeps the file near 1.3 MB.
    backbone = mobilenet_v3_small(weights=None, dilated=True, width_mult=0.5)
    net = _lraspp_mobilenetv3(backbone, num_classes=1 + len(COLOURS))
    rng = np.random.default_rng(SEED + 1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        scenes = [draw_scene(rng, SEG_SIZE) for _ in range(n)]
        x = torch.from_numpy(np.stack([s[0] for s in scenes])).permute(0, 3, 1, 2).float() / 255.0
        return (x - mean) / std, torch.from_numpy(np.stack([s[2] for s in scenes])).long()

    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    net.train()
    t0 = time.perf_counter()
    for step in range(steps):
        x, y = batch(16)
        loss = torch.nn.functional.cross_entropy(net(x)["out"], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"lraspp step {step}: loss {loss.item():.3f}")
    print(f"lraspp training: {time.perf_counter() - t0:.0f} s")
    _recalibrate_batchnorm(net, batch)
    net.eval()
    with torch.no_grad():
        x, y = batch(32)
        pred = net(x)["out"].argmax(1)
        ious = [((pred == c) & (y == c)).sum().item() / max(((pred == c) | (y == c)).sum().item(), 1)
                for c in range(1 + len(COLOURS))]
    print(f"lraspp mIoU on 32 fresh synthetic images: {np.mean(ious):.3f} (per class {np.round(ious, 3).tolist()})")

    class Logits(torch.nn.Module):  # the ONNX output is the logits tensor, not torchvision's dict
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)["out"]

    target = out_dir / "lraspp_shapes.onnx"
    torch.onnx.export(Logits(net).eval(), torch.zeros(1, 3, SEG_SIZE, SEG_SIZE), str(target), opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    import onnxslim

    onnxslim.slim(str(target), str(target))
    _infer_output_shape(target)
    return target


def _infer_output_shape(path: Path) -> None:
    """Replace the exporter's symbolic output dims by what ONNX shape inference proves.

    The traced ``F.interpolate(size=input.shape[-2:])`` leaves the output declared as
    ``[batch, dim_1, dim_2, dim_3]``; with data propagation ONNX infers ``[batch, 4, 128, 128]``.
    """
    import onnx

    model = onnx.load(str(path))
    model.graph.output[0].type.tensor_type.ClearField("shape")
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _recalibrate_batchnorm(net, batch, n_batches: int = 25) -> None:
    """Exact running statistics of the final weights (torchvision's BN momentum 0.01 lags a short run)."""
    import torch

    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    net.train()
    with torch.no_grad():
        for _ in range(n_batches):
            net(batch(16)[0])


def check(paths: list[Path]) -> None:
    import onnx
    import onnxruntime as ort

    for path in paths:
        model = onnx.load(str(path))
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        meta = {p.key: p.value for p in model.metadata_props}
        print(f"{path.name}: {path.stat().st_size / 1e6:.2f} MB, opset "
              f"{max(o.version for o in model.opset_import if o.domain in ('', 'ai.onnx'))}, "
              f"inputs {[(i.name, i.shape) for i in sess.get_inputs()]}, "
              f"outputs {[(o.name, o.shape) for o in sess.get_outputs()]}, metadata {json.dumps(meta)[:300]}")


def write_scenes(folder: Path, count: int, size: int, seed: int = 0) -> list[Path]:
    """``count`` unlabelled scenes (PNG) of the kind the models were trained on: calibration and
    evaluation images for exporting them (numpy + Pillow only; no torch needed)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        img, _, _ = draw_scene(rng, size)
        paths.append(folder / f"scene{i:04d}.png")
        Image.fromarray(img).save(paths[-1])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("tests/data/foreign"))
    parser.add_argument("--scenes", type=Path, default=None,
                        help="Only write --count unlabelled scene PNGs of --size into this folder (no torch needed).")
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--size", type=int, default=DET_SIZE)
    parser.add_argument("--epochs", type=int, default=30, help="YOLOv8 training epochs")
    parser.add_argument("--seg-steps", type=int, default=300, help="LR-ASPP training steps")
    parser.add_argument("--only", choices=["detect", "segment"], default=None)
    args = parser.parse_args()
    if args.scenes is not None:
        print(f"wrote {len(write_scenes(args.scenes, args.count, args.size))} scenes to {args.scenes}")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    torch_threads = os.environ.get("OMP_NUM_THREADS")
    print(f"OMP_NUM_THREADS={torch_threads}")
    made = []
    with tempfile.TemporaryDirectory(prefix="foreign-models-") as tmp:
        work = Path(tmp)
        # Ultralytics keeps settings in a user folder and checks online assets: keep both local.
        os.environ.setdefault("YOLO_CONFIG_DIR", str(work / "ultralytics-config"))
        os.environ.setdefault("YOLO_OFFLINE", "1")
        if args.only in (None, "detect"):
            v8 = make_yolov8(args.out.resolve(), work, args.epochs)
            made += [v8, make_yolov5_layout(v8, args.out)]
        if args.only in (None, "segment"):
            made.append(make_lraspp(args.out, args.seg_steps))
    check(made)


if __name__ == "__main__":
    main()
