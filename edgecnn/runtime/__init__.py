"""Embeddable runtime: numpy + onnxruntime + Pillow only (never TensorFlow).

>>> from edgecnn.runtime import Classifier
>>> clf = Classifier("model.onnx", provider="cpu")
>>> clf.predict(["cat.jpg"], top_k=3)
"""

from edgecnn.runtime.classifier import Classifier, Prediction, default_model_path, read_card
from edgecnn.runtime.preprocess import load_image, normalize_batch
from edgecnn.runtime.session import create_session

__all__ = ["Classifier", "Prediction", "default_model_path", "read_card", "load_image", "normalize_batch",
           "create_session"]
