"""Local runtimes: turn a model source (.onnx, .ort, .ptl, checkpoint .pt, or an in-memory module) into a runner
that performs one inference on a fixed input, for ONNX Runtime, eager PyTorch or the TorchScript lite interpreter."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import BenchError

log = logging.getLogger(__name__)

RUNTIMES = ("onnxruntime", "torch", "ptl")
FORMATS = {".onnx": "onnx", ".ort": "ort", ".ptl": "ptl", ".pt": "checkpoint", ".pth": "checkpoint"}
# Which runtimes can execute which file format (a checkpoint is converted on the fly for onnxruntime and ptl).
_RUNS_ON = {
    "onnx": ("onnxruntime",),
    "ort": ("onnxruntime",),
    "ptl": ("ptl",),
    "checkpoint": RUNTIMES,
    "module": RUNTIMES,
}


@dataclasses.dataclass
class ModelSource:
    """One model to benchmark: a file path, or an in-memory ``nn.Module`` (scripts benchmarking zoo variants).

    ``role`` is ``"baseline"`` for the dense reference the speedup divides by, ``"model"`` otherwise."""

    path: str | os.PathLike | None = None
    label: str | None = None
    role: str = "model"
    module: Any = None
    input_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.module is None):
            raise BenchError("a model source needs exactly one of a file path or an in-memory module")
        if self.role not in ("baseline", "model"):
            raise BenchError(f"model role must be 'baseline' or 'model', got {self.role!r}")
        if self.label is None:
            self.label = Path(self.path).name if self.path is not None else type(self.module).__name__
        if self.input_shape is not None:
            self.input_shape = tuple(int(v) for v in self.input_shape)

    @property
    def format(self) -> str:
        if self.module is not None:
            return "module"
        suffix = Path(self.path).suffix.lower()
        if suffix not in FORMATS:
            raise BenchError(
                f"{self.path}: unsupported model format {suffix or '(no suffix)'!r}; give an .onnx, .ort, .ptl file "
                "or a .pt checkpoint"
            )
        return FORMATS[suffix]


@dataclasses.dataclass
class Runner:
    """A loaded model ready to time: ``call()`` runs one inference on the fixed input."""

    label: str
    format: str
    runtime: str
    input_shape: tuple[int, ...]
    """One sample's shape (without the batch dimension)."""
    call: Callable[[], Any]
    tmpdir: str | None = None

    def close(self) -> None:
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None


def fixed_input(shape: tuple[int, ...], batch_size: int, seed: int) -> np.ndarray:
    """The benchmark input: standard normal, float32, seeded, so equal shapes get identical tensors."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch_size, *shape)).astype(np.float32)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise BenchError(f"{path}: no such file")
    if path.is_dir():
        raise BenchError(f"{path} is a folder; give a model file (.onnx, .ort, .ptl, .pt) or a run folder")


def _load_checkpoint_module(source: ModelSource):
    from ..checkpoint import load_checkpoint
    from ..models import input_shape_of

    loaded = load_checkpoint(source.path)
    shape = loaded.meta.get("input_shape")
    if shape is None and loaded.arch is not None:
        with contextlib.suppress(Exception):
            shape = input_shape_of({"name": loaded.arch["name"], "kwargs": loaded.arch.get("kwargs", {})})
    return loaded.model, tuple(shape) if shape else None


def _module_of(source: ModelSource):
    """The torch module and its known input shape (None when unknown) for a checkpoint or module source."""
    if source.module is not None:
        shape = None
        arch = getattr(source.module, "edgeprune_arch", None)
        if arch is not None:
            from ..models import input_shape_of

            with contextlib.suppress(Exception):
                shape = input_shape_of({"name": arch["name"], "kwargs": arch.get("kwargs", {})})
        return source.module, shape
    return _load_checkpoint_module(source)


def _sibling_checkpoint_shape(path: Path) -> tuple[int, ...] | None:
    """A .ptl file records no input shape; a run folder keeps its checkpoint (``model.pt`` beside ``model.ptl``)."""
    sibling = path.with_suffix(".pt")
    if not sibling.is_file():
        return None
    import torch

    try:
        obj = torch.load(sibling, map_location="cpu", weights_only=True)
    except Exception:
        return None
    shape = obj.get("meta", {}).get("input_shape") if isinstance(obj, dict) else None
    return tuple(int(v) for v in shape) if shape else None


def _shape_error(source: ModelSource, shape: tuple[int, ...], batch_size: int, exc: BaseException) -> BenchError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:240]
    return BenchError(
        f"{source.label} does not accept input of shape {(batch_size, *shape)} ({first}); "
        "pass --input-shape C,H,W matching the model (and a --batch-size it was exported for)"
    )


def _need_shape(source: ModelSource, shape: tuple[int, ...] | None) -> tuple[int, ...]:
    if shape is None:
        raise BenchError(f"cannot tell the input shape of {source.label}; pass --input-shape C,H,W")
    return tuple(int(v) for v in shape)


def export_onnx_for_bench(module, input_shape: tuple[int, ...], path: str | os.PathLike, batch_size: int = 1) -> Path:
    """Write ``module`` as the ONNX file the benchmark would time for it (see :func:`_export_onnx`)."""
    import torch

    path = Path(path)
    x = torch.from_numpy(fixed_input(tuple(input_shape), batch_size, 0))
    with torch.no_grad():
        _export_onnx(module.eval(), x, path)
    return path


def _export_onnx(module, example, path: Path) -> None:
    """Checkpoint → temporary ONNX for ONNX Runtime, made the way users ship it: ``edgeprune.export.export_onnx``
    when that stage is installed, else the legacy exporter (self-contained file, BN folded)."""
    try:
        from ..export import export_onnx
    except ImportError:
        export_onnx = None
    batch = int(example.shape[0])
    if export_onnx is not None:
        export_onnx(module, path, tuple(example.shape[1:]), dynamic_batch=batch > 1)
        return
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), dynamo=False, external_data=False,
                          input_names=["input"], output_names=["output"], do_constant_folding=True)


def _ort_runner(source: ModelSource, onnx_path: Path, fmt: str, threads: int, batch_size: int,
                input_shape: tuple[int, ...] | None, seed: int, device: str, tmpdir: str | None) -> Runner:
    import onnxruntime as ort

    if device != "cpu":
        raise BenchError(f"--runtime onnxruntime runs on --device cpu here (got {device!r}); use --runtime torch "
                         "for cuda")
    opts = ort.SessionOptions()
    # Fixed, explicit threading: intra-op threads as asked, no inter-op parallelism (one sequential graph).
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:240]
        raise BenchError(f"{source.label}: ONNX Runtime cannot load it ({first}); re-export the model") from None
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise BenchError(f"{source.label} has {len(inputs)} inputs; the benchmark feeds exactly one image tensor")
    dims = inputs[0].shape
    if input_shape is None and all(isinstance(d, int) for d in dims[1:]) and len(dims) > 1:
        input_shape = tuple(dims[1:])
    shape = _need_shape(source, input_shape)
    feed = {inputs[0].name: fixed_input(shape, batch_size, seed)}
    try:
        sess.run(None, feed)
    except Exception as exc:
        raise _shape_error(source, shape, batch_size, exc) from None

    def call(sess=sess, feed=feed):
        return sess.run(None, feed)

    return Runner(source.label, fmt, "onnxruntime", shape, call, tmpdir)


def _torch_call(model, x, device: str) -> Callable[[], Any]:
    if device == "cuda":
        import torch

        def call_cuda(model=model, x=x, sync=torch.cuda.synchronize):
            out = model(x)
            sync()  # kernels are asynchronous: time until they are done
            return out

        return call_cuda

    def call(model=model, x=x):
        return model(x)

    return call


def make_runner(source: ModelSource, runtime: str, *, threads: int, batch_size: int,
                input_shape: tuple[int, ...] | None, seed: int, device: str = "cpu") -> Runner:
    """Load ``source`` for ``runtime`` and check one inference on the fixed input works."""
    if runtime not in RUNTIMES:
        raise BenchError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if source.path is not None:
        _check_file(Path(source.path))
    fmt = source.format
    if runtime not in _RUNS_ON[fmt]:
        raise BenchError(
            f"{source.label}: a {fmt} file runs with --runtime {' or '.join(_RUNS_ON[fmt])}, not {runtime}"
        )
    shape_override = input_shape or source.input_shape
    if fmt in ("onnx", "ort"):
        return _ort_runner(source, Path(source.path), fmt, threads, batch_size, shape_override, seed, device, None)

    import torch

    if fmt == "ptl":
        from torch.jit.mobile import _load_for_lite_interpreter

        if device != "cpu":
            raise BenchError("the TorchScript lite interpreter runs on --device cpu only")
        try:
            model = _load_for_lite_interpreter(str(source.path))
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:240]
            raise BenchError(f"{source.label}: not a loadable TorchScript lite (.ptl) file ({first})") from None
        shape = _need_shape(source, shape_override or _sibling_checkpoint_shape(Path(source.path)))
        x = torch.from_numpy(fixed_input(shape, batch_size, seed))
        return _checked(source, Runner(source.label, fmt, "ptl", shape, _torch_call(model, x, "cpu")), shape,
                        batch_size)

    module, known_shape = _module_of(source)
    shape = _need_shape(source, shape_override or known_shape)
    module = module.eval()
    x = torch.from_numpy(fixed_input(shape, batch_size, seed))
    if runtime == "torch":
        if device == "cuda":
            module = module.to("cuda")
            x = x.to("cuda")
        return _checked(source, Runner(source.label, fmt, "torch", shape, _torch_call(module, x, device)), shape,
                        batch_size)
    tmpdir = tempfile.mkdtemp(prefix="edgeprune-bench-")
    try:
        if runtime == "onnxruntime":
            onnx_path = Path(tmpdir) / "model.onnx"
            try:  # a wrong input shape shows up here, before a slower export fails on it less clearly
                with torch.no_grad():
                    module(x)
            except Exception as exc:
                raise _shape_error(source, shape, batch_size, exc) from None
            with torch.no_grad():
                _export_onnx(module, x, onnx_path)
            return _ort_runner(source, onnx_path, fmt, threads, batch_size, shape, seed, device, tmpdir)
        if device != "cpu":
            raise BenchError("the TorchScript lite interpreter runs on --device cpu only")
        from torch.jit.mobile import _load_for_lite_interpreter

        ptl_path = Path(tmpdir) / "model.ptl"
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(module, x, check_trace=False)
                traced._save_for_lite_interpreter(str(ptl_path))
        except Exception as exc:
            raise _shape_error(source, shape, batch_size, exc) from None
        lite = _load_for_lite_interpreter(str(ptl_path))
        runner = Runner(source.label, fmt, "ptl", shape, _torch_call(lite, x, "cpu"), tmpdir)
        return _checked(source, runner, shape, batch_size)
    except BaseException:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise


def _checked(source: ModelSource, runner: Runner, shape: tuple[int, ...], batch_size: int) -> Runner:
    import torch

    try:
        with torch.inference_mode():
            runner.call()
    except Exception as exc:
        runner.close()
        raise _shape_error(source, shape, batch_size, exc) from None
    return runner
