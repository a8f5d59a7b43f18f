"""Edge app: classify every image that lands in a folder, with the edgecnn runtime only.

    python examples/edge_app/classify_folder.py incoming/ --model model.onnx [--once] [--out results.jsonl]
    some-camera-tool | python examples/edge_app/classify_folder.py - --model model.onnx   # frames on stdin

Imports numpy + onnxruntime + Pillow through ``edgecnn.runtime`` (no TensorFlow, no server).
A file is classified once its size has stopped changing (a camera may still be writing it);
new files are classified together as one batch. Each result is one JSON line on stdout (and in
--out). Unreadable images are reported and skipped: the app keeps running. Frames on stdin are
length-prefixed: a 4-byte big-endian size, then the encoded image (PNG, JPEG, ...).
"""

from __future__ import annotations

import argparse
import json
import logging
import struct
import sys
import time
from pathlib import Path
from typing import BinaryIO, Iterator

from edgecnn.errors import EdgecnnError
from edgecnn.runtime import Classifier, default_model_path

log = logging.getLogger("edge_app")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def settled_images(folder: Path, seen: dict[Path, tuple[int, int, int]]) -> list[Path]:
    """Images of ``folder`` that are new or changed and whose size is the same as on the last look."""
    ready = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        stat = path.stat()
        state = (stat.st_size, stat.st_mtime_ns)
        previous = seen.get(path)
        if previous == state + (1,):  # already classified, unchanged
            continue
        if previous == state + (0,):  # unchanged since the last look: fully written
            ready.append(path)
            seen[path] = state + (1,)
        else:
            seen[path] = state + (0,)
    return ready


def classify(clf: Classifier, names: list[str], images: list[object], top_k: int) -> Iterator[dict]:
    """One result per image; a batch with a bad image falls back to one image at a time."""
    try:
        predictions = clf.predict(images, top_k=top_k)
    except EdgecnnError as err:
        if len(images) == 1:
            yield {"image": names[0], "error": str(err)}
            return
        for name, image in zip(names, images):
            yield from classify(clf, [name], [image], top_k)
        return
    for name, preds in zip(names, predictions):
        yield {"image": name, "top_k": [p.to_dict() for p in preds]}


def read_frames(stream: BinaryIO) -> Iterator[bytes]:
    """Length-prefixed encoded frames until end of stream."""
    while header := stream.read(4):
        (size,) = struct.unpack(">I", header)
        yield stream.read(size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="Folder to watch, or - for length-prefixed frames on stdin.")
    ap.add_argument("--model", type=Path, default=None, help="ONNX model (default: edgecnn's reference model).")
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--interval", type=float, default=0.5, help="Seconds between looks at the folder.")
    ap.add_argument("--once", action="store_true", help="Classify what is there (two looks) and exit.")
    ap.add_argument("--out", type=Path, help="Also append the JSON lines to this file.")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads.")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)

    clf = Classifier(args.model or default_model_path(), provider="cpu", threads=args.threads)
    log.info("%s: %s labels, input %s", clf.card.name, clf.card.num_classes, clf.card.input_size)
    out = args.out.open("a", encoding="utf-8") if args.out else None

    def emit(result: dict) -> None:
        line = json.dumps(result)
        print(line, flush=True)
        if out is not None:
            out.write(line + "\n")
            out.flush()

    if args.source == "-":
        for i, frame in enumerate(read_frames(sys.stdin.buffer)):
            for result in classify(clf, [f"frame-{i}"], [frame], args.top_k):
                emit(result)
        return
    folder = Path(args.source)
    if not folder.is_dir():
        raise SystemExit(f"{folder} is not a folder.")
    seen: dict[Path, tuple[int, int, int]] = {}  # path -> (size, mtime, classified)
    looks = 0
    try:
        while True:
            batch = settled_images(folder, seen)
            if batch:
                for result in classify(clf, [str(p) for p in batch], list(batch), args.top_k):
                    emit(result)
            looks += 1
            if args.once and looks >= 2:
                break
            time.sleep(args.interval)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
