"""Export for Android: ONNX (.onnx + its LZMA .7z), TorchScript lite (.ptl) and ONNX Runtime (.ort), each validated
against the PyTorch model; stored sizes as SeReNe reports them; INT8 models gated on test accuracy."""

from .bundle import FORMATS, export_all, parse_formats
from .onnx_export import export_onnx
from .ort_format import export_ort
from .quantize import QuantizeConfig, export_int8, quantize_onnx
from .sizes import compression_ratio, lzma_7z_bytes, param_counts, write_7z
from .torchscript import export_ptl
from .validate import RTOL, Mismatch, compare, runner_for, tolerance, validation_inputs

__all__ = [
    "FORMATS",
    "RTOL",
    "Mismatch",
    "QuantizeConfig",
    "compare",
    "compression_ratio",
    "export_all",
    "export_int8",
    "export_onnx",
    "export_ort",
    "export_ptl",
    "lzma_7z_bytes",
    "param_counts",
    "parse_formats",
    "quantize_onnx",
    "runner_for",
    "tolerance",
    "validation_inputs",
    "write_7z",
]
