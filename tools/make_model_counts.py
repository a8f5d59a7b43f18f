"""Write edgecnn/assets/model_counts.json, the table `edgecnn models` serves (dev script; needs [train]).

    .venv/bin/python tools/make_model_counts.py [--out edgecnn/assets/model_counts.json]

Counts every zoo model at its default input size and at 224x224, for 10 classes, at its default
width, by building it. Rerun after changing an architecture: tests/train/test_counts.py rebuilds the
model of every row (the full-size ones in its slow tests) and fails when the table disagrees.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgecnn._files import atomic_write_text  # noqa: E402
from edgecnn._optional import require  # noqa: E402
from edgecnn.train.counts import COUNTS_FILE, CountsKey, counts_json  # noqa: E402
from edgecnn.train.registry import get_model_spec, list_models  # noqa: E402

SIZES = ((224, 224),)  # besides each model's default: the size of `edgecnn models --input-size 224`
NUM_CLASSES = 10  # the default of `edgecnn models --classes`


def table_keys() -> list[CountsKey]:
    """The cached combinations: each model at its default size and at SIZES."""
    keys = []
    for name in list_models():
        default = get_model_spec(name).input_size
        for size in dict.fromkeys((default, *SIZES)):
            keys.append(CountsKey(name, size, NUM_CLASSES))
    return keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=COUNTS_FILE)
    args = parser.parse_args()
    keras, tf = require("keras", "train"), require("tensorflow", "train")  # TensorFlow quietly
    text = counts_json(table_keys(), versions={"keras": keras.__version__, "tensorflow": tf.__version__})
    atomic_write_text(args.out, text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
