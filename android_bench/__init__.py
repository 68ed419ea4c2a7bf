"""android_bench: benchmark ONNX models on Android phones over ADB (standalone; does not import edgeprune).

Public entry points: ``run_benchmark`` (``android_bench.bench``), ``list_devices`` / ``describe_device``
(``android_bench.devices``), the runner registry in ``android_bench.runners``, and ``python -m android_bench``.
Errors derive from ``android_bench.errors.AndroidBenchError``. The names are resolved on first use so that
``import android_bench`` stays light (adb-shell, rich and onnxruntime are imported only when needed).
"""

__version__ = "0.1.0"

_LAZY = {
    "run_benchmark": "android_bench.bench",
    "list_devices": "android_bench.devices",
    "describe_device": "android_bench.devices",
    "AndroidBenchError": "android_bench.errors",
    "get_runner": "android_bench.runners.base",
    "register_runner": "android_bench.runners.base",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'android_bench' has no attribute {name!r}")
