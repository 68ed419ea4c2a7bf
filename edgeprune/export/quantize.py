"""INT8 models with ONNX Runtime's quantization, validated against the float model and gated on test accuracy.

Static (the default): ``quant_pre_process`` (shape inference and graph optimization, as ORT recommends before static
quantization), then ``quantize_static`` in QDQ format with per-channel int8 weights and uint8 activations whose ranges
are calibrated on a few hundred training images (MinMax, Entropy or Percentile). Dynamic: ``quantize_dynamic`` of the
MatMul layers (Gemm nodes, i.e. ``nn.Linear``, are rewritten to MatMul + Add first, since ORT quantizes only MatMul
dynamically); activations are quantized at run time, so no calibration data is needed: for Linear-heavy models.

Validation (:data:`INT8_RTOL`, :data:`MIN_AGREEMENT`): on real test samples, the 99th percentile over samples of
the largest |Δ logit| (INT8 vs the float PyTorch model) must stay within ``INT8_RTOL * max(1, max|y|)`` and the top-1
classes must agree on at least ``MIN_AGREEMENT`` of the samples. Rounding to 256 levels per tensor moves logits by a
few percent of their scale; a broken quantization (wrong axis, wrong scale) moves them by their own magnitude. The
plain max |Δ| is reported but not bounded: a rare image whose activations exceed the calibrated range is clipped and
can move by much more, which is what calibration trades for resolution (the accuracy gate judges its cost). The accuracy
gate then compares top-1 error on the whole test split: an INT8 model whose error exceeds the float model's by more
than ``max_drop`` percentage points is not shipped.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from ..errors import ConfigError, ExportError

log = logging.getLogger(__name__)

MODES = ("static", "dynamic")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
INT8_RTOL = 0.1
"""The 99th percentile (over real samples) of max |Δ logits| may reach this fraction of ``max(1, max|y|)``."""
MIN_AGREEMENT = 0.9
"""Least share of real samples whose INT8 top-1 class equals the float model's."""
VALIDATION_SAMPLES = 256
SUFFIX = ".int8"


@dataclasses.dataclass
class QuantizeConfig:
    """How to quantize (validated when built)."""

    mode: str = "static"
    calibration: str = "minmax"
    calibration_samples: int = 256
    per_channel: bool = True
    max_drop: float = 0.5
    """Largest allowed top-1 error increase of INT8 over float on the test split, in percentage points."""
    keep_failed: bool = False
    """Ship an INT8 model that misses ``max_drop`` anyway (the record says it missed)."""
    seed: int = 0

    def __post_init__(self) -> None:
        self.mode = str(self.mode).lower()
        self.calibration = str(self.calibration).lower()
        if self.mode not in MODES:
            raise ConfigError(f"unknown quantization mode {self.mode!r}; choose static (calibrated, all layers) or "
                              "dynamic (Linear layers, no calibration)")
        if self.calibration not in CALIBRATION_METHODS:
            raise ConfigError(f"unknown calibration method {self.calibration!r}; choose "
                              f"{', '.join(CALIBRATION_METHODS)}")
        if not isinstance(self.calibration_samples, int) or self.calibration_samples < 1:
            raise ConfigError(f"--calibration-samples must be a positive integer, got {self.calibration_samples!r}")
        if not isinstance(self.max_drop, (int, float)) or not 0 <= self.max_drop < float("inf"):
            raise ConfigError(f"--max-int8-drop must be a number of percentage points ≥ 0, got {self.max_drop!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_quantize(value: str | None) -> bool:
    """``--quantize``: ``int8`` → True, ``none`` / empty → False."""
    v = (value or "none").strip().lower()
    if v in ("none", "off", "no", "false", ""):
        return False
    if v == "int8":
        return True
    raise ConfigError(f"unknown --quantize {value!r}; choose int8 or none")


def calibration_batch(train, n: int, seed: int = 0) -> np.ndarray:
    """``n`` training samples (a seeded random subset) as one float32 array."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(train), generator=g)[: min(n, len(train))]
    if hasattr(train, "x"):
        return train.x[idx].detach().float().cpu().numpy()
    return torch.stack([train[int(i)][0] for i in idx]).float().numpy()


def split_batches(split, batch: int = 256):
    """(inputs, labels) of a dataset split as numpy batches, in order, without loading the whole split at once."""
    for start in range(0, len(split), batch):
        if hasattr(split, "x"):
            x, y = split.x[start:start + batch], split.y[start:start + batch]
        else:
            items = [split[i] for i in range(start, min(start + batch, len(split)))]
            x, y = torch.stack([it[0] for it in items]), torch.as_tensor([int(it[1]) for it in items])
        yield x.detach().float().cpu().numpy(), y.detach().cpu().numpy()


def _reader(samples: np.ndarray, input_name: str, batch: int = 32):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(range(0, len(samples), batch))

        def get_next(self):
            start = next(self._it, None)
            return None if start is None else {input_name: samples[start:start + batch]}

        def rewind(self):
            self._it = iter(range(0, len(samples), batch))

    return Reader()


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[name]


@contextlib.contextmanager
def _quiet():
    """ORT's quantization tools print progress and warnings (e.g. "Please consider to run pre-processing")."""
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            yield
        finally:
            root.setLevel(level)


def gemm_to_matmul(proto) -> int:
    """Rewrite ``Gemm(A, B, C)`` with a constant B (alpha = beta = 1, transA = 0) as ``MatMul(A, Bᵀ?) + C`` in place,
    so ``quantize_dynamic`` (which quantizes MatMul, not Gemm) reaches ``nn.Linear`` layers. Returns the count."""
    import onnx
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    nodes, changed = [], 0
    for node in proto.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or len(node.input) < 2 or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            w = w.T
        w_name = f"{node.input[1]}_matmul"
        proto.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), w_name))
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [mm_out], name=f"{node.name}_MatMul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=f"{node.name}_Add"))
        changed += 1
    if changed:
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
        used = {i for n in proto.graph.node for i in n.input}
        keep = [i for i in proto.graph.initializer if i.name in used]
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(keep)
        onnx.checker.check_model(proto)
    return changed


def quantize_onnx(float_onnx: str | os.PathLike, out: str | os.PathLike, config: QuantizeConfig,
                  calibration: np.ndarray | None = None) -> dict:
    """Quantize ``float_onnx`` into ``out`` (not validated); return what was done."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    float_onnx, out = Path(float_onnx), Path(out)
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=out.parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        info: dict = {"mode": config.mode, "per_channel": config.per_channel, "format": "QDQ"}
        try:
            with _quiet():
                quant_pre_process(str(float_onnx), str(pre))
            info["pre_process"] = "applied"
        except Exception as exc:  # the optimizer refuses some graphs; quantization still works without it
            log.info("quant_pre_process failed, quantizing the exported graph as is: %s", _first(exc))
            shutil.copyfile(float_onnx, pre)
            info["pre_process"] = f"skipped ({_first(exc)})"
        try:
            if config.mode == "static":
                if calibration is None or not len(calibration):
                    raise ConfigError("static INT8 quantization needs calibration samples of the model's dataset")
                first = onnx.load(str(pre), load_external_data=False).graph.input[0]
                fixed = first.type.tensor_type.shape.dim[0].dim_value if first.type.tensor_type.shape.dim else 0
                with _quiet():  # a graph with a fixed batch size is calibrated in batches of that size
                    quantize_static(str(pre), str(out), _reader(calibration, first.name, fixed or 32), quant_format=QuantFormat.QDQ,
                                    per_channel=config.per_channel, activation_type=QuantType.QUInt8,
                                    weight_type=QuantType.QInt8, calibrate_method=_method(config.calibration))
                info.update(calibration=config.calibration, calibration_samples=int(len(calibration)),
                            activations="uint8 (asymmetric, calibrated)", weights="int8 (symmetric" +
                            (", per channel)" if config.per_channel else ", per tensor)"))
            else:
                proto = onnx.load(str(pre))
                info["gemm_rewritten"] = gemm_to_matmul(proto)
                onnx.save_model(proto, str(pre))
                with _quiet():
                    quantize_dynamic(str(pre), str(out), op_types_to_quantize=["MatMul"],
                                     per_channel=config.per_channel, weight_type=QuantType.QInt8)
                info.update(format="dynamic (MatMulInteger)", activations="uint8 (dynamic, per inference)",
                            weights="int8" + (" per channel" if config.per_channel else " per tensor"))
        except ConfigError:
            raise
        except Exception as exc:
            raise ExportError(f"INT8 quantization failed: {_first(exc)}; try --quant-mode dynamic or another "
                              "--calibration") from None
    ops = [n.op_type for n in onnx.load(str(out), load_external_data=False).graph.node]
    quantized = sum(op in ("QuantizeLinear", "DynamicQuantizeLinear") for op in ops)
    if not quantized:
        raise ExportError("INT8 quantization changed nothing (no layer ORT can quantize); ship the float model")
    info["quantize_nodes"] = quantized
    return info


def batched_logits(path: str | os.PathLike, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """The first output of an .onnx / .ort file on ``x``, in batches (one sample at a time for a fixed batch of 1)."""
    from .validate import onnxruntime_runner

    return _logits(onnxruntime_runner(path), x, batch)


def _logits(run, x: np.ndarray, batch: int = 256) -> np.ndarray:
    size = getattr(run, "fixed_batch", None) or batch
    try:
        return np.concatenate([run(x[i:i + size])[0] for i in range(0, len(x), size)])
    except Exception:
        if size == 1:
            raise
        # e.g. a graph whose reshape baked in the export's batch size: run it at its own size
        return np.concatenate([run(x[i:i + 1])[0] for i in range(len(x))])


def torch_logits(model: nn.Module, x: np.ndarray, batch: int = 512) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(x[i:i + batch])).numpy() for i in range(0, len(x), batch)])


def agreement(reference: np.ndarray, got: np.ndarray) -> dict:
    """Top-1 agreement and max |Δ logits| of ``got`` against ``reference`` (N×classes)."""
    per_sample = (np.abs(got.astype(np.float64) - reference.astype(np.float64)).reshape(len(reference), -1).max(1)
                  if got.size else np.zeros(1))
    return {"samples": int(len(reference)),
            "top1_agreement": float(np.mean(got.argmax(1) == reference.argmax(1))) if len(reference) else 1.0,
            "max_abs_diff": float(per_sample.max()), "p99_abs_diff": float(np.percentile(per_sample, 99)),
            "tolerance": INT8_RTOL * max(1.0, float(np.max(np.abs(reference)))) if reference.size else INT8_RTOL}


def _check_agreement(name: str, a: dict, hint: str) -> None:
    problems = []
    if not a["p99_abs_diff"] <= a["tolerance"]:
        problems.append(f"99th-percentile |Δ logits| {a['p99_abs_diff']:.3g} > tolerance {a['tolerance']:.3g}")
    if a["top1_agreement"] < MIN_AGREEMENT:
        problems.append(f"top-1 agreement {a['top1_agreement']:.1%} < {MIN_AGREEMENT:.0%}")
    if problems:
        raise ExportError(f"{name} does not match the float model on {a['samples']} real samples: "
                          f"{'; '.join(problems)}; {hint}")


def top1_error(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.argmax(1) != labels))


def check_int8_data(data, input_shape: Sequence[int]) -> None:
    """The dataset can calibrate and gate a model of ``input_shape``: a non-empty test split of that sample shape."""
    shape = tuple(int(s) for s in input_shape)
    if not len(data.test):
        raise ConfigError(f"{data.name} has an empty test split: the INT8 accuracy gate needs test images")
    sample = tuple(next(split_batches(data.test, 1))[0].shape[1:])
    if sample != shape:
        raise ConfigError(f"the dataset's samples have shape {sample}, the model's input is {shape}; quantize with the "
                          "dataset the model was trained on (--dataset)")


def export_int8(
    model: nn.Module,
    out_dir: str | os.PathLike,
    stem: str,
    input_shape: Sequence[int],
    data,
    config: QuantizeConfig | None = None,
    *,
    ort: bool = True,
    opset: int = 18,
) -> dict:
    """Quantize ``model`` to INT8 as ``out_dir/<stem>.int8.{onnx,ort,7z}`` and gate it on the test split of ``data``
    (a DataBundle: calibration on ``data.train``, validation and accuracy on ``data.test``).

    Returns the INT8 record (also written to ``<stem>.int8.json``): ``config``, ``quantization``, ``float`` and
    ``int8`` test ``top1_error``, ``drop_pt``, ``passed``, ``shipped``, ``agreement`` (real samples vs the float
    PyTorch model), ``test_agreement`` (whole test split), sizes ``onnx_bytes``, ``onnx_7z_bytes``, ``ort_bytes``.
    An INT8 model that misses the gate is not written (unless ``config.keep_failed``): ``shipped`` is False then.
    Raises ExportError when the INT8 model does not match the float model within the documented tolerance.
    """
    from .._progress import make_progress

    config = config or QuantizeConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    net = copy.deepcopy(model).cpu().eval()
    shape = tuple(int(s) for s in input_shape)
    check_int8_data(data, shape)
    calib = calibration_batch(data.train, config.calibration_samples, config.seed) if config.mode == "static" else None
    with make_progress() as progress:
        task = progress.add_task(f"INT8 {stem}", total=4, info="float ONNX")
        return _export_int8(net, out_dir, stem, shape, data, config, calib, ort, opset,
                            lambda info: (progress.advance(task), progress.update(task, info=info)))



def gate(err_float: float, err_int8: float, samples: int, max_drop: float) -> tuple[float, bool]:
    """The INT8 accuracy gate counted in whole test images: (drop in pt, passed).

    A drop exactly at ``max_drop`` passes: floating-point noise in ``100 * (e_q - e_f)`` (one image of 200 is
    0.5000000000000004 pt) must not refuse a model that loses no more images than the limit allows.
    """
    n = max(int(samples), 1)
    lost = round(err_int8 * n) - round(err_float * n)
    drop = 100.0 * lost / n
    allowed = float(max_drop) * n / 100.0
    return drop, lost <= allowed + 1e-6

def _export_int8(net, out_dir: Path, stem: str, shape, data, config: QuantizeConfig, calib, ort: bool, opset: int,
                 step) -> dict:
    from .. import _io
    from .onnx_export import build_onnx
    from .ort_format import build_ort
    from .sizes import write_7z
    from .validate import example_input, onnxruntime_runner

    name = f"{stem}{SUFFIX}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.export-", dir=out_dir))
    try:
        float_onnx = tmp / f"{stem}.float.onnx"
        # A dynamic batch axis: the gate runs the whole test split in batches through the very file that ships.
        build_onnx(net, example_input(shape, 1), float_onnx, opset=opset, dynamic_batch=True,
                   metadata={"edgeprune_arch": getattr(net, "edgeprune_arch", None) or {}, "input_shape": list(shape),
                             "quantization": f"int8 {config.mode}"})
        step("quantize" + (f" (calibrating on {len(calib)} images)" if calib is not None else ""))
        built = {"onnx": tmp / f"{name}.onnx"}
        quant = quantize_onnx(float_onnx, built["onnx"], config, calib)
        step(f"float and INT8 models on {len(data.test):,} test images")
        run_int8 = onnxruntime_runner(built["onnx"])
        float_parts, int8_parts, label_parts, first = [], [], [], []
        for x, y in split_batches(data.test):
            float_parts.append(torch_logits(net, x))
            int8_parts.append(_logits(run_int8, x))
            label_parts.append(y)
            if sum(len(f) for f in first) < VALIDATION_SAMPLES:
                first.append(x)
        float_logits, int8_logits = np.concatenate(float_parts), np.concatenate(int8_parts)
        test_y = np.concatenate(label_parts)
        real_x = np.concatenate(first)[:VALIDATION_SAMPLES]
        step(".ort, .7z")
        real = slice(0, len(real_x))
        close = agreement(float_logits[real], int8_logits[real])
        err_f, err_q = top1_error(float_logits, test_y), top1_error(int8_logits, test_y)
        drop, passed = gate(err_f, err_q, len(test_y), config.max_drop)
        record = {
            "format": "edgeprune-int8", "version": 1, "stem": stem, "config": config.to_dict(),
            "quantization": quant, "dataset": data.name, "test_samples": int(len(test_y)),
            "float": {"top1_error": err_f}, "int8": {"top1_error": err_q}, "drop_pt": drop,
            "max_drop_pt": float(config.max_drop), "passed": passed, "shipped": passed or config.keep_failed,
            "agreement": close, "test_agreement": agreement(float_logits, int8_logits),
            "tolerance": {"rtol": INT8_RTOL, "min_top1_agreement": MIN_AGREEMENT,
                          "samples": close["samples"]},
        }
        if record["shipped"]:
            # A model that misses the gate is refused for that reason alone; one that ships must also match.
            _check_agreement(built["onnx"].name, close, "the quantization is broken; try another --calibration or "
                                                        "--quant-mode, or ship the float model")
            if ort:
                built["ort"] = tmp / f"{name}.ort"
                record["ort"] = build_ort(built["onnx"], built["ort"])
                ort_close = agreement(int8_logits[real], batched_logits(built["ort"], real_x))
                _check_agreement(built["ort"].name, ort_close,
                                 "the ORT converter changed the INT8 model; export without .ort")
                record["ort"]["agreement_with_onnx"] = ort_close
            built["7z"] = tmp / f"{name}.7z"
            write_7z(built["onnx"], built["7z"], arcname=built["onnx"].name)
            if "ort" not in built:
                (out_dir / f"{name}.ort").unlink(missing_ok=True)  # an earlier export's, of another model
            for key, src in built.items():
                os.replace(src, out_dir / src.name)
                record[f"{key}_bytes" if key != "7z" else "onnx_7z_bytes"] = (out_dir / src.name).stat().st_size
                record.setdefault("artifacts", {})[key] = src.name
        else:
            # A stale INT8 model from an earlier export must not pass for this one.
            for suffix in (".onnx", ".ort", ".7z"):
                (out_dir / f"{name}{suffix}").unlink(missing_ok=True)
            record["onnx_bytes"] = built["onnx"].stat().st_size
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _io.write_json(out_dir / f"{name}.json", record)
    step("done")
    log.info("INT8 %s: test top-1 error %.2f%% (float %.2f%%, %+.2f pt, gate %.2f pt: %s)", name, 100 * err_q,
             100 * err_f, drop, config.max_drop, "passed" if passed else "MISSED")
    return record


def gate_message(record: dict) -> str:
    """The one line that says an INT8 model missed the accuracy gate, and what to do."""
    return (f"INT8 model {record['stem']}{SUFFIX} misses the accuracy gate: test top-1 error "
            f"{100 * record['int8']['top1_error']:.2f}% vs float {100 * record['float']['top1_error']:.2f}% "
            f"(+{record['drop_pt']:.2f} pt > --max-int8-drop {record['max_drop_pt']:g}); the float model is the "
            "artifact. Try --calibration entropy or percentile, more --calibration-samples, or pass --keep-int8 to "
            "ship it anyway")


def _first(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]
