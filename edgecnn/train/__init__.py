"""Training stage: the only sub-package that imports TensorFlow/Keras."""

from __future__ import annotations

import os

# Keep TensorFlow's C++ start-up chatter off the user's terminal; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
