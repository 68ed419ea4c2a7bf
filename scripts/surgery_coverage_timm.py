"""Surgery coverage on timm families: exact / partly cut / refused, with the reason.

Each model is built with random weights (``pretrained=False``: nothing is downloaded), BatchNorm statistics
randomized, and half of every coupled channel group killed (30 % of them constant: weights zero, bias/BN β not),
inside the traceable parts when torch-pruning cannot trace the whole model. Then ``edgeprune.surgery.surgery``:

* **exact**: every killed group was cut and the slim model matches (verification passed);
* **partly cut**: the slim model matches, but some groups stayed (their reason is listed) or the model was cut by
  parts;
* **refused**: surgery raised SurgeryError (the reason is its message).

    .venv/bin/python scripts/surgery_coverage_timm.py --size 64 --out runs/timm_coverage.json
"""

from __future__ import annotations

import argparse
import collections
import json
import time

import torch

FAMILIES = [
    "resnet18", "resnet10t", "resnext26ts", "regnetx_002", "mobilenetv2_050", "mobilenetv3_small_050",
    "efficientnet_b0", "lcnet_050", "mnasnet_small", "ghostnet_050", "densenet121", "dla34", "convnext_atto",
    "repvgg_a0", "cspresnet50", "mobilevit_xxs", "efficientvit_b0", "vit_tiny_patch16_224",
]


def kill(model, shape, seed: int) -> None:
    from edgeprune.surgery.parts import TraceError, record_part_inputs
    from edgeprune.surgery.synthetic import kill_random_channels

    try:
        kill_random_channels(model, shape, 0.5, 0.3, seed=seed)
        return
    except (TraceError, IndexError, KeyError):  # untraceable, or traced with indices that do not fit the layers
        pass
    inputs, calls = record_part_inputs(model, [torch.zeros(1, *shape)])

    def visit(name, module):
        if next(module.parameters(), None) is None:
            return
        rec = inputs.get(name)
        if rec and calls.get(name) == 1 and rec[0] is not None:
            try:
                kill_random_channels(module, tuple(rec[0].shape[1:]), 0.5, 0.3, seed=seed)
                return
            except (TraceError, IndexError, KeyError):
                pass
        for child, sub in module.named_children():
            visit(f"{name}.{child}", sub)

    for child, sub in model.named_children():
        visit(child, sub)


def measure(name: str, size: int) -> dict:
    from edgeprune.errors import EdgepruneError
    from edgeprune.models import create_model
    from edgeprune.surgery import surgery
    from edgeprune.surgery.synthetic import randomize_bn

    kwargs = {"num_classes": 10}
    if name.startswith(("vit_", "mobilevit", "efficientvit")):
        kwargs["img_size"] = size
    row: dict = {"model": name, "input": size}
    t0 = time.perf_counter()
    try:
        model = create_model(f"timm:{name}", **kwargs).eval()
    except (EdgepruneError, TypeError) as exc:
        kwargs.pop("img_size", None)
        try:
            model = create_model(f"timm:{name}", **kwargs).eval()
        except EdgepruneError as exc2:
            return {**row, "status": "not built", "reason": str(exc2 or exc)}
    shape = (3, size, size)
    torch.manual_seed(0)
    randomize_bn(model, seed=0)
    try:
        kill(model, shape, seed=1)
        res = surgery(model, shape)
    except EdgepruneError as exc:
        return {**row, "status": "refused", "reason": str(exc)[:300], "seconds": round(time.perf_counter() - t0, 1)}
    except Exception as exc:  # a crash is a finding too: record it and go on with the next family
        return {**row, "status": "crashed", "reason": f"{type(exc).__name__}: {str(exc)[:240]}",
                "seconds": round(time.perf_counter() - t0, 1)}
    r = res.report
    skipped = collections.Counter(s["reason"].split(" (")[0][:90] for s in r.get("skipped_groups", []))
    partial = r.get("partial")
    status = "exact" if not skipped and not partial and not r.get("kept") else "partly cut"
    return {
        **row, "status": status,
        "params": [r["params_before"], r["params_after"]], "macs": [r["macs_before"], r["macs_after"]],
        "channels_removed": r["channels_removed"], "kept_channels": len(r.get("kept", [])),
        "skipped_groups": sum(skipped.values()), "skipped_reasons": dict(skipped.most_common(3)),
        "partial": {"parts_cut": len(partial["parts_cut"]), "split": [u["module"] for u in partial["split"]]}
        if partial else None,
        "relative_diff": r["verification"]["relative_diff"], "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--models", default=",".join(FAMILIES))
    ap.add_argument("--out", default="runs/timm_coverage.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from edgeprune import _io

    rows = []
    for name in args.models.split(","):
        row = measure(name.strip(), args.size)
        rows.append(row)
        print(json.dumps(row), flush=True)
        _io.write_json(args.out, rows)


if __name__ == "__main__":
    main()
