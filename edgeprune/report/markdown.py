"""report.md: the paper's table (SeReNe Table II–IV layout) and the per-layer details, as Markdown."""

from __future__ import annotations

MAX_LAYER_COLUMNS = 8
"""Above this many layers the per-layer % moves from the main table to its own table (e.g. ResNet-32)."""


def _pct(v: float) -> str:
    if v >= 99.995:
        return "100"
    return f"{v:.2f}"


def _kb(n: int | None) -> str:
    return "–" if n is None else f"{n / 1000:,.0f}" if n >= 10_000 else f"{n / 1000:,.1f}"


def neurons_string(neurons: list[int]) -> str:
    """SeReNe's notation for remaining neurons per layer: ``[20]-[49]-[449]-[10]``."""
    return "-".join(f"[{n}]" for n in neurons)


def _err(v) -> str:
    return "–" if v is None else f"{100 * float(v):.2f}"


def _ratio(v: float) -> str:
    return f"{v:.2f}x" if v != float("inf") else "∞"


def render_markdown_table(report: dict) -> str:
    """The paper's table: remaining parameters % per layer, compression ratio, remaining neurons,
    .onnx → .7z sizes in kB and top-1 error %, one row for the baseline and one for the pruned network."""
    layers = report.get("layers", [])
    inline = len(layers) <= MAX_LAYER_COLUMNS
    head = ["Approach"] + ([f"{row['label']} (%)" for row in layers] if inline else ["Remaining params (%)"])
    head += ["Compr. ratio", "Remaining neurons", ".onnx → .7z [kB]", "Top-1 error (%)"]
    base, pruned = report["baseline"], report["pruned"]
    total_pct = 100.0 * pruned["params_nonzero"] / base["params_total"] if base["params_total"] else 0.0
    rows = [
        ["Baseline"] + (["100"] * len(layers) if inline else ["100"])
        + ["1x", neurons_string(base["neurons"]),
           f"{_kb(base.get('onnx_bytes'))} → {_kb(base.get('onnx_7z_bytes'))}", _err(base.get("top1_error"))],
        [_method_label(report.get("method"))] + ([_pct(row["remaining_pct"]) for row in layers] if inline
                                                 else [_pct(total_pct)])
        + [_ratio(report["compression_ratio"]), neurons_string(pruned["neurons"]),
           f"{_kb(pruned.get('onnx_bytes'))} → {_kb(pruned.get('onnx_7z_bytes'))}", _err(pruned.get("top1_error"))],
    ]
    return _table(head, rows, align=["l"] + ["r"] * (len(head) - 1))


def _method_label(method) -> str:
    m = str(method or "pruned")
    names = {"lb": "SeReNe (LB)", "ub": "SeReNe (UB)", "exact": "SeReNe (exact)", "local": "SeReNe (local)",
             "serene": "SeReNe", "lobster": "LOBSTER", "l2": "ℓ2 + pruning"}
    key = m.lower()
    return names.get(key.removeprefix("serene-"), names.get(key, m))


def _table(head: list[str], rows: list[list[str]], align: list[str]) -> str:
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_layers_table(report: dict) -> str:
    head = ["Layer", "Name", "Type", "Neurons", "Params", "Remaining", "Remaining (%)"]
    rows = [[r["label"], f"`{r['name']}`", r["kind"], f"{r['neurons_before']} → {r['neurons_after']}",
             f"{r['params']:,}", f"{r['remaining']:,}", _pct(r["remaining_pct"])] for r in report.get("layers", [])]
    return _table(head, rows, align=["l", "l", "l", "r", "r", "r", "r"])


def _sizes_table(report: dict) -> str:
    head = ["Model", "Params", "Nonzero", "MACs", ".onnx [kB]", ".7z [kB]", ".ptl [kB]", ".ort [kB]", "max \\|Δ\\|"]
    rows = []
    for key, title in (("baseline", "Baseline"), ("pruned", "Pruned" + (" (slim)" if report["pruned"].get("slim")
                                                                       else " (masked)"))):
        m = report[key]
        diffs = m.get("max_abs_diff") or {}
        diff = ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()) or "–"
        rows.append([title, f"{m['params_total']:,}", f"{m['params_nonzero']:,}",
                     f"{m['macs']:,}" if m.get("macs") is not None else "–", _kb(m.get("onnx_bytes")),
                     _kb(m.get("onnx_7z_bytes")), _kb(m.get("ptl_bytes")), _kb(m.get("ort_bytes")), diff])
    return _table(head, rows, align=["l"] + ["r"] * 8)


def render_markdown(report: dict, plots: list[str] | None = None) -> str:
    """The whole report.md (without any bench sections, which ``edgeprune bench`` maintains)."""
    shape = "×".join(str(s) for s in report.get("input_shape", []))
    lines = [
        f"# {report.get('arch') or 'model'} on {report.get('dataset') or '?'} — {_method_label(report.get('method'))}",
        "",
        f"Input {shape}. Compression ratio = baseline parameters ÷ remaining (nonzero) parameters "
        f"(SeReNe's definition): **{_ratio(report['compression_ratio'])}**.",
        "",
        render_markdown_table(report),
        "",
        "## Per layer",
        "",
        render_layers_table(report),
        "",
        "## Artifacts",
        "",
        _sizes_table(report),
        "",
        ".7z: LZMA2 archive of the .onnx file. max |Δ|: largest difference between an artifact's output and its "
        "PyTorch model's on random inputs (tolerance 1e-4 · max(1, max|y|)).",
    ]
    if report["pruned"].get("masked_onnx_bytes"):
        p = report["pruned"]
        lines += ["", f"The masked network (same shape as the baseline, pruned parameters zero) stores as "
                      f"{_kb(p['masked_onnx_bytes'])} → {_kb(p['masked_onnx_7z_bytes'])} kB."]
    if report.get("int8"):
        lines += ["", "## INT8", "", _int8_section(report)]
    mism = report["baseline"].get("mismatches", []) + report["pruned"].get("mismatches", [])
    if mism:
        lines += ["", "**Artifact mismatches:** " + "; ".join(mism)]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{_stem(p)}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _stem(p: str) -> str:
    return p.rsplit("/", 1)[-1].rsplit(".", 1)[0]


def _int8_section(report: dict) -> str:
    """Dense float, slim float and slim INT8 side by side: params, MACs, stored sizes, test error."""
    q, base, pruned = report["int8"], report["baseline"], report["pruned"]
    head = ["Model", "Params", "MACs", ".onnx [kB]", ".7z [kB]", ".ort [kB]", "Top-1 error (%)"]
    latency = _three_way_latency(report)
    head += [f"Median {device} [ms] (speedup)" for device in latency]
    rows = []
    for key, title, m, err in (
            ("dense", "Dense float", base, base.get("top1_error")),
            ("slim", "Slim float", pruned, q.get("float_top1_error", pruned.get("top1_error"))),
            ("int8", "Slim INT8" + ("" if q.get("shipped") else " (not shipped)"), q, q.get("top1_error"))):
        rows.append([title, f"{m['params_total']:,}" if m.get("params_total") is not None else "–",
                     f"{m['macs']:,}" if m.get("macs") is not None else "–", _kb(m.get("onnx_bytes")),
                     _kb(m.get("onnx_7z_bytes")), _kb(m.get("ort_bytes")), _err(err)]
                    + [by_role.get(key, "–") for by_role in latency.values()])
    quant = q.get("quantization") or {}
    agree = q.get("agreement") or {}
    verdict = "passed" if q.get("passed") else "MISSED" + (" (shipped anyway)" if q.get("shipped") else "")
    note = (f"INT8: {quant.get('format', '?')}, weights {quant.get('weights', '?')}, activations "
            f"{quant.get('activations', '?')}"
            + (f", calibration {quant['calibration']} on {quant.get('calibration_samples')} training images"
               if quant.get("calibration") else "")
            + f". Accuracy gate (test top-1 error increase ≤ {q.get('max_drop_pt')} pt): {q.get('drop_pt', 0):+.2f} pt, "
              f"{verdict}. Against the float model on {agree.get('samples', '?')} test images: top-1 agreement "
              f"{100 * agree.get('top1_agreement', 0):.1f} %, max |Δ logits| {agree.get('max_abs_diff', 0):.3g}.")
    return _table(head, rows, align=["l"] + ["r"] * (len(head) - 1)) + "\n\n" + note


def _three_way_latency(report: dict) -> dict[str, dict[str, str]]:
    """Per bench device that measured all three models (``edgeprune bench RUN``): median and speedup by role."""
    out: dict[str, dict[str, str]] = {}
    for bench in report.get("bench") or []:
        cells = {}
        for m in bench.get("models") or []:
            label = str(m.get("label") or "")
            key = "dense" if m.get("role") == "baseline" else "int8" if "int8" in label.lower() else "slim"
            if m.get("median_ms") is None:
                continue
            sp = m.get("speedup") or {}
            cells[key] = f"{m['median_ms']:.4g}" + (f" ({sp['median']:.2f}×)" if sp.get("median") else "")
        if {"dense", "slim", "int8"} <= set(cells):
            out[bench.get("device", "?")] = cells
    return out