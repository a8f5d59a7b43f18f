"""Training stage: the only sub-package that imports TensorFlow/Keras at module level.

Importing the package (or its stdlib-only modules :mod:`edgecnn.train.config` and
:mod:`edgecnn.train.registry`) loads no TensorFlow; the modules that need it import
:mod:`edgecnn.train._tf` first, which loads it quietly, once.
"""
