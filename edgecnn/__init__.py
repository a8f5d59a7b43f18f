"""edgecnn: CNN image classifiers from Keras training to ONNX on the edge."""

__version__ = "0.1.0"
__all__ = ["__version__"]
