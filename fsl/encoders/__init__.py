"""Frozen encoders, one module each (clip, offline, aligned), the ONNX Runtime towers apart, and one factory."""
