"""android_bench: benchmark ONNX models on Android phones over ADB (standalone; does not import edgeprune)."""

__version__ = "0.1.0"
