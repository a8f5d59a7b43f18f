"""edgecnn: CNN image models (classify, detect, segment) from Keras training or any ONNX to the edge."""

__version__ = "0.1.0"
__all__ = ["__version__"]
