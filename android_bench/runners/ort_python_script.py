"""Time an ONNX model with onnxruntime's Python API; pushed to the device and run there (stdlib + numpy + onnxruntime).

Output, one line each:  ``INFER <ms>`` per timed inference, then
``SUMMARY runs=<N> warmup=<W> threads=<T> mean_ms=<m> ort=<version>``. Errors go to stderr with exit code 2.
Times are collected first and printed after the loop, so writing the output does not disturb the timing.
"""

import argparse
import sys
import time


def _feed(session, shape_override):
    import numpy as np

    dtypes = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
              "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}
    rng = np.random.default_rng(0)
    feed = {}
    for i, inp in enumerate(session.get_inputs()):
        if shape_override is not None and i == 0:
            shape = list(shape_override)
        else:
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        dtype = dtypes.get(inp.type)
        if dtype is None:
            raise SystemExit(f"error: input {inp.name} has unsupported type {inp.type}")
        feed[inp.name] = rng.standard_normal(shape).astype(dtype)
    return feed


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--input-shape", default=None, help="comma-separated shape of the first input")
    args = ap.parse_args(argv)

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, args.threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(args.model, sess_options=opts, providers=["CPUExecutionProvider"])
    shape = tuple(int(d) for d in args.input_shape.split(",")) if args.input_shape else None
    feed = _feed(session, shape)
    for _ in range(args.warmup):
        session.run(None, feed)
    times = []
    clock = time.perf_counter_ns
    for _ in range(args.runs):
        t0 = clock()
        session.run(None, feed)
        times.append((clock() - t0) / 1e6)
    out = [f"INFER {t:.6f}" for t in times]
    mean = sum(times) / len(times) if times else float("nan")
    out.append(f"SUMMARY runs={len(times)} warmup={args.warmup} threads={args.threads} mean_ms={mean:.6f} "
               f"ort={ort.__version__}")
    sys.stdout.write("\n".join(out) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
