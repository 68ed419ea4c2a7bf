#!/usr/bin/env python
"""The pruning-minima experiment (Tartaglione et al., ICANN 2020) at CPU scale on Fashion-MNIST LeNet-5.

Stages (each a call into edgeprune.analysis):
  1. baseline      a trained dense LeNet-5 with its initial weights (runs/base-lenet5.pt from `edgeprune train`)
  2. gradual       LOBSTER / SeReNe run folders from `edgeprune compress` when given or when --compress can make
                   them; and always an iterative magnitude-pruning schedule (prune a little, fine-tune, repeat) as a
                   gradual reference built only from this package
  3. one-shot      global magnitude pruning at each sparsity, then finetune / rewind / reinit / random-structure
  4. Fig. 1        test error against pruned fraction for every method
  5. minima        at the highest sparsity, the gradual solution G and the best one-shot solution 1-S: top Hessian
                   eigenvalues (Fig. 2b), the loss plane through both (Fig. 2a), mean squared PSP (Fig. 3) and first /
                   second-order PSP-entropy (Fig. 4)

Outputs: OUT/results.json, checkpoints under OUT/, figures docs/img/analysis_*.png. Budget: about 15–20 minutes on
two shared cores with the defaults (one torch thread: on a loaded 2-core machine extra threads only contend).

    .venv/bin/python scripts/pruning_minima.py --baseline runs/base-lenet5.pt
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeprune import _io  # noqa: E402
from edgeprune.analysis import plots  # noqa: E402
from edgeprune.analysis.hessian import top_hessian_eigenvalues  # noqa: E402
from edgeprune.analysis.landscape import loss_plane  # noqa: E402
from edgeprune.masks import masks_from_zeros, sparsity_masks, sparsity_of  # noqa: E402
from edgeprune.analysis.oneshot import OneShotConfig, oneshot, prepare_model, train_masked  # noqa: E402
from edgeprune.analysis.psp import psp_entropy  # noqa: E402
from edgeprune.analysis.reports import layer_summary, sample_batches  # noqa: E402
from edgeprune.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from edgeprune.data import Batches, load_dataset  # noqa: E402
from edgeprune.train import evaluate  # noqa: E402

log = logging.getLogger("pruning_minima")
T0 = time.time()


def stamp(msg: str) -> None:
    log.info("[%5.0f s] %s", time.time() - T0, msg)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="runs/base-lenet5-safe.pt")
    ap.add_argument("--out", default="runs/pruning-minima")
    ap.add_argument("--img", default="docs/img")
    ap.add_argument("--tag", default="", help="figure names become analysis_<tag>_*.png (e.g. lenet300)")
    ap.add_argument("--sparsities", default="0.5,0.8,0.9,0.95,0.98")
    ap.add_argument("--modes", default="finetune,rewind,reinit,random-structure")
    ap.add_argument("--seeds", type=int, default=2, help="seeds for rewind / reinit / random-structure")
    ap.add_argument("--train-subset", type=int, default=8000)
    ap.add_argument("--epochs-finetune", type=int, default=1)
    ap.add_argument("--epochs-scratch", type=int, default=3, help="epochs for rewind / reinit / random-structure")
    ap.add_argument("--gradual-epochs", type=int, default=1, help="fine-tuning epochs per iterative-pruning step")
    ap.add_argument("--gradual-runs", nargs="*", default=[], help="existing `edgeprune compress` run folders")
    ap.add_argument("--compress", action="store_true", help="try `edgeprune compress --method lobster` first")
    ap.add_argument("--compress-args", default="", help="extra arguments for edgeprune compress")
    ap.add_argument("--hessian-samples", type=int, default=512)
    ap.add_argument("--entropy-samples", type=int, default=5000)
    ap.add_argument("--landscape-samples", type=int, default=1024)
    ap.add_argument("--grid", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="a smoke run: tiny subsets, two sparsities")
    return ap.parse_args()


def try_compress(base: Path, out: Path, extra: str) -> list[Path]:
    """Stage 2a: LOBSTER via the product's own gradual pipeline, when it exists."""
    import importlib.util
    import shlex

    if importlib.util.find_spec("edgeprune.pipeline") is None:
        stamp("edgeprune compress is not available (no edgeprune.pipeline): LOBSTER / SeReNe points skipped")
        return []
    run = out / "lobster"
    if (run / "masked.pt").exists():
        return [run]
    cmd = [str(ROOT / ".venv/bin/edgeprune"), "compress", str(base), "--method", "lobster",
           "--dataset", "fashion-mnist", "--out", str(run)] + shlex.split(extra)
    stamp("running " + " ".join(cmd))
    import os

    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not (run / "masked.pt").exists():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        stamp(f"edgeprune compress failed ({last}); LOBSTER points skipped")
        return []
    return [run]


def cached_oneshot(base_path: Path, cfg: OneShotConfig, out: Path) -> dict:
    """`oneshot` unless the same configuration already ran into ``out`` (a rerun only adds what is new)."""
    import dataclasses

    done = out / f"oneshot-{cfg.mode}.json"
    if done.exists():
        summary = json.loads(done.read_text())
        if summary.get("config") == json.loads(json.dumps(dataclasses.asdict(cfg))):
            return summary
    return oneshot(base_path, cfg, out)


def oneshot_point(summary: dict) -> dict:
    errs = torch.tensor([r["top1_error"] for r in summary["runs"]], dtype=torch.float64)
    return {"sparsity": summary["runs"][0]["sparsity"], "errors": errs.tolist(), "mean": float(errs.mean()),
            "std": float(errs.std(unbiased=False)), "best": summary["runs"][int(errs.argmin())]["path"],
            "best_error": float(errs.min())}


def gradual_magnitude(base, data, train_split, sparsities, epochs, out: Path, device) -> list[dict]:
    """Stage 2b: iterative magnitude pruning — prune to the next sparsity, fine-tune with the mask pinned, repeat.
    Zeros stay the smallest magnitudes, so each mask contains the previous one."""
    model = base.model
    test_b = Batches(data.test, 512)
    points = []
    for k, s in enumerate(sorted(sparsities)):
        path = out / f"gradual-magnitude-{s:.3f}.pt"
        if path.exists():  # a rerun continues the schedule from the saved step
            ld = load_checkpoint(path)
            model = ld.model
            points.append({"sparsity": ld.meta["sparsity"], "top1_error": ld.meta["top1_error"], "path": str(path)})
            continue
        masks = sparsity_masks(model, s)
        model, _ = prepare_model(model, base.arch, masks, "finetune")
        train_b = Batches(train_split, 128, shuffle=True, seed=100 + k, augment=data.augment)
        train_masked(model, masks, train_b, epochs, lr=0.01, device=device, description=f"gradual {s:.0%}")
        te = evaluate(model, test_b, device)
        path = save_checkpoint(path, model, arch=base.arch,
                               meta={**{k2: base.meta[k2] for k2 in ("dataset", "input_shape", "num_classes")},
                                     "top1_error": te["top1_error"], "sparsity": sparsity_of(masks)},
                               extra={"masks": masks})
        points.append({"sparsity": sparsity_of(masks), "top1_error": te["top1_error"], "path": str(path)})
        stamp(f"gradual magnitude {s:.0%}: error {te['top1_error']:.2%}")
    return points


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    out, img = Path(args.out), Path(args.img)
    prefix = f"analysis_{args.tag}_" if args.tag else "analysis_"
    if args.quick:
        args.sparsities, args.train_subset, args.seeds = "0.5,0.9", 1000, 1
        args.epochs_scratch, args.hessian_samples, args.entropy_samples, args.landscape_samples, args.grid = \
            1, 128, 500, 256, 2
    sparsities = [float(s) for s in args.sparsities.split(",")]
    modes = args.modes.split(",")
    out.mkdir(parents=True, exist_ok=True)

    # 1. baseline
    base_path = Path(args.baseline)
    if not base_path.exists():
        base_path = out / "base-lenet5-5ep.pt"
        if not base_path.exists():
            stamp(f"{args.baseline} missing: training a 5-epoch baseline into {base_path}")
            subprocess.run([str(ROOT / ".venv/bin/edgeprune"), "train", "--arch", "lenet5", "--epochs", "5",
                            "--out", str(base_path)], check=True)
    base = load_checkpoint(base_path)
    data = load_dataset(base.meta.get("dataset", "fashion-mnist"), seed=int(base.meta.get("seed", 0)))
    g = torch.Generator().manual_seed(0)
    train_split = data.train.subset(torch.randperm(len(data.train), generator=g)[: args.train_subset])
    base_err = base.meta.get("top1_error")
    stamp(f"baseline {base_path}: test error {base_err:.2%}")
    results = {"baseline": {"path": str(base_path), "top1_error": base_err}, "settings": vars(args)}

    # 2. gradual
    gradual_runs = [Path(p) for p in args.gradual_runs]
    if args.compress:
        gradual_runs += try_compress(base_path, out, args.compress_args)
    external = []
    for run in gradual_runs:
        ld = load_checkpoint(run / "masked.pt" if run.is_dir() else run)
        sp = sparsity_of(masks_from_zeros(ld.model))
        if sp < 0.01:  # e.g. a run whose first threshold broke the accuracy target and kept the dense model
            stamp(f"{run}: only {sp:.2%} pruned; left out of the comparison")
            continue
        te = evaluate(ld.model, Batches(data.test, 512), device)
        external.append({"sparsity": sp, "top1_error": te["top1_error"], "path": str(run)})
        stamp(f"gradual run {run}: {sp:.2%} pruned, error {te['top1_error']:.2%}")
    results["gradual_runs"] = external
    results["gradual_magnitude"] = gradual_magnitude(base, data, train_split, sparsities, args.gradual_epochs,
                                                     out / "gradual", device)

    # 3. one-shot at fixed sparsities, and at each gradual run's sparsity (the paper's protocol)
    def config_for(mode: str, **kw) -> OneShotConfig:
        return OneShotConfig(mode=mode, seeds=1 if mode == "finetune" else args.seeds,
                             epochs=args.epochs_finetune if mode == "finetune" else args.epochs_scratch,
                             train_subset=args.train_subset, device="cpu", **kw)

    oneshot_points: dict[str, list[dict]] = {m: [] for m in modes}
    for s in sparsities:
        for mode in modes:
            p = oneshot_point(cached_oneshot(base_path, config_for(mode, sparsity=s), out / f"oneshot-{s:.3f}"))
            oneshot_points[mode].append(p)
            stamp(f"one-shot {mode} at {s:.0%}: error {p['mean']:.2%} ± {p['std']:.2%}")
    matched: dict[str, dict[str, dict]] = {}
    for g in external:
        run = Path(g["path"])
        matched[str(run)] = {}
        for mode in modes:
            p = oneshot_point(cached_oneshot(base_path, config_for(mode, match=str(run)),
                                             out / f"oneshot-match-{run.name}"))
            matched[str(run)][mode] = p
            oneshot_points[mode].append(p)
            stamp(f"one-shot {mode} at {run.name}'s {p['sparsity']:.2%}: error {p['mean']:.2%} ± {p['std']:.2%}")
    results["oneshot"] = oneshot_points
    results["oneshot_matched"] = matched

    # 4. Fig. 1: error against pruned fraction
    series = {f"one-shot {m}": [(p["sparsity"], p["mean"], p["std"]) for p in pts] for m, pts in oneshot_points.items()}
    series["gradual (iterative magnitude)"] = [(p["sparsity"], p["top1_error"], 0.0)
                                               for p in results["gradual_magnitude"]]
    for g in external:
        series[f"gradual ({Path(g['path']).name})"] = [(g["sparsity"], g["top1_error"], 0.0)]
    plots.error_vs_compression(series, img / f"{prefix}error_vs_sparsity.png", base_err)

    # 5. the two solutions: the sparsest gradual run and the best one-shot run at its sparsity
    if external:
        g_point = max(external, key=lambda p: p["sparsity"])
        g_path = Path(g_point["path"])
        g_label = f"G ({g_path.name})"
        g_path = g_path / "masked.pt" if g_path.is_dir() else g_path
        best_mode, sp = min(matched[g_point["path"]].items(), key=lambda kv: kv[1]["best_error"])
    else:
        top = max(sparsities)
        g_point = max(results["gradual_magnitude"], key=lambda p: p["sparsity"])
        g_path, g_label = Path(g_point["path"]), "G (iterative magnitude)"
        best_mode, sp = min(((m, p) for m, pts in oneshot_points.items() for p in pts
                             if abs(p["sparsity"] - top) < 1e-3), key=lambda mp: mp[1]["best_error"])
    s_path = sp["best"]
    s_label = f"1-S ({best_mode})"
    G, S = load_checkpoint(g_path).model, load_checkpoint(s_path).model
    stamp(f"minima: {g_label} {g_path} vs {s_label} {s_path}")
    minima = {"G": {"label": g_label, "path": str(g_path)}, "S": {"label": s_label, "path": str(s_path)}}
    for key, model in (("G", G), ("S", S)):
        minima[key]["top1_error"] = evaluate(model, Batches(data.test, 512), device)["top1_error"]
        minima[key]["sparsity"] = sparsity_of(masks_from_zeros(model))

    hb, _ = sample_batches(data.name, None, "train", args.hessian_samples, 256, seed=0)
    for key, model in (("G", G), ("S", S)):
        minima[key]["hessian"] = top_hessian_eigenvalues(model, hb, k=5, method="lanczos", iters=30)
        stamp(f"{key}: top Hessian eigenvalues {[round(v, 3) for v in minima[key]['hessian']['eigenvalues']]}")
    plots.eigenvalue_bars([(minima[k]["label"], minima[k]["hessian"]["eigenvalues"]) for k in ("G", "S")],
                          img / f"{prefix}hessian_top5.png")

    lb, _ = sample_batches(data.name, None, "train", args.landscape_samples, 512, seed=1)
    plane = loss_plane(S, G, lb, steps=args.grid, margin=0.5, beta_range=1.0, seed=0)
    minima["landscape"] = plane
    plots.loss_plane_figure(plane, img / f"{prefix}loss_plane.png", ("1-S", "G"))
    stamp(f"loss plane: 1-S {plane['loss_a']:.4f}, G {plane['loss_b']:.4f}")

    eb, _ = sample_batches(data.name, None, "train", args.entropy_samples, 256, seed=2)
    ent = []
    for key, model in (("G", G), ("S", S)):
        layers = psp_entropy(model, eb, data.num_classes, second_order=True, device=device)
        ent.append((minima[key]["label"], layers))
        minima[key]["entropy"] = [layer_summary(le, data.num_classes) for le in layers]
    dense_layers = psp_entropy(base.model, eb, data.num_classes, second_order=False, device=device)
    minima["dense_psp_sq"] = {le.name: le.psp_sq_mean for le in dense_layers}
    plots.entropy_histograms(ent, img / f"{prefix}entropy_order1.png", 1, data.num_classes)
    plots.entropy_histograms(ent, img / f"{prefix}entropy_order2.png", 2, data.num_classes)
    plots.psp_norm_bars(ent + [("dense baseline", dense_layers)], img / f"{prefix}psp_norm.png")
    results["minima"] = minima
    results["seconds"] = round(time.time() - T0, 1)
    _io.write_json(out / "results.json", results)
    stamp(f"done: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
