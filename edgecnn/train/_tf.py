"""Import this module before ``keras`` or ``tensorflow`` in a train module.

TensorFlow then loads quietly (its C++ start-up lines kept off the terminal), once, and only in
the modules that use it: the package ``__init__`` stays free of it, so ``edgecnn.train.config``
and registry look-ups import in milliseconds.
"""

from __future__ import annotations

from edgecnn._optional import import_tensorflow_quietly

import_tensorflow_quietly()
