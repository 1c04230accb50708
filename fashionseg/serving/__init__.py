"""Serving: what users run on new photos: predict.py, the web demo, ONNX export (and int8 quantization)."""
