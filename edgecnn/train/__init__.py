"""Training stage: the only sub-package that imports TensorFlow/Keras.

Importing it loads TensorFlow once, quietly: TensorFlow 2.21 writes start-up lines from C++
(oneDNN, CUDA stubs) before its log level applies, so stderr is muted for the import alone.
Set ``EDGECNN_TF_LOGS=1`` to see them.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
if not os.path.exists("/dev/nvidiactl") and sys.platform.startswith("linux"):
    # No NVIDIA driver: TensorFlow's C++ side would log "failed call to cuInit" as an error on
    # every run; its real errors still reach Python as exceptions.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _import_tensorflow_quietly() -> None:
    if "tensorflow" in sys.modules or os.environ.get("EDGECNN_TF_LOGS"):
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    except ImportError:
        pass  # the real import, with its message, happens where TensorFlow is used
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_import_tensorflow_quietly()
