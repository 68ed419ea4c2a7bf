"""Latency benchmarks: local runtimes (ONNX Runtime, eager PyTorch, TorchScript lite), the alternating-block
protocol, statistics as pure functions of raw samples, and reports (table, JSON, report.md section, plot)."""

from .protocol import (
    BenchResult,
    ModelResult,
    bench_models,
    block_schedule,
    result_from_android,
    result_from_samples,
)
from .report import markdown_section, plot_latency, render_table, update_report_md, write_outputs
from .runtimes import RUNTIMES, ModelSource, export_onnx_for_bench, make_runner
from .sources import int8_source, resolve_run_folder
from .stats import speedup, summarize_samples

__all__ = [
    "BenchResult",
    "ModelResult",
    "ModelSource",
    "RUNTIMES",
    "bench_models",
    "block_schedule",
    "export_onnx_for_bench",
    "int8_source",
    "make_runner",
    "markdown_section",
    "plot_latency",
    "render_table",
    "resolve_run_folder",
    "result_from_android",
    "result_from_samples",
    "speedup",
    "summarize_samples",
    "update_report_md",
    "write_outputs",
]
