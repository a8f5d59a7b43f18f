"""Training stage: the only sub-package that imports TensorFlow/Keras (loaded quietly, once)."""

from __future__ import annotations

from edgecnn._optional import import_tensorflow_quietly

import_tensorflow_quietly()
