"""android_bench: benchmark ONNX models on Android phones over ADB (standalone; does not import edgeprune).

Public entry points (heavy imports happen inside them): ``android_bench.bench.run_benchmark``,
``android_bench.devices.list_devices`` / ``describe_device``, the runner registry in ``android_bench.runners``,
and ``python -m android_bench``. Errors derive from ``android_bench.errors.AndroidBenchError``.
"""

__version__ = "0.1.0"
