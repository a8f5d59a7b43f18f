"""Embeddable runtime: numpy + onnxruntime + Pillow only (never TensorFlow)."""
