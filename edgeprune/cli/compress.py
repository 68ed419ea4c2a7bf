"""`edgeprune compress`: SeReNe (or LOBSTER / ℓ2) regularize → threshold on a trained model into a run folder."""

from __future__ import annotations

from pathlib import Path

import typer

from ._app import app, echo, print_table


@app.command()
def compress(
    model: Path = typer.Argument(None, help="Trained checkpoint (from `edgeprune train`); optional with --resume."),
    dataset: str = typer.Option(None, help="Dataset (default: the one recorded in the checkpoint)."),
    method: str = typer.Option(None, help="serene-lb, serene-exact, serene-ub, serene-local, lobster or l2."),
    lam: float = typer.Option(None, "--lambda", help="λ of the update rule (SeReNe eq. 15, LOBSTER eq. 4)."),
    twt: float = typer.Option(None, help="Thresholding worsening tolerance: loss may grow to (1+TWT)·L̂."),
    pwe: int = typer.Option(None, help="Plateau waiting epochs before each threshold step."),
    lr: float = typer.Option(None, help="SGD learning rate."),
    momentum: float = typer.Option(None, help="SGD momentum."),
    weight_decay: float = typer.Option(None, help="ℓ2 weight decay (default 1e-4 for l2, else 0)."),
    batch_size: int = typer.Option(None),
    target_drop: float = typer.Option(None, help="Allowed validation-accuracy drop vs the baseline (0.005 = 0.5 pt)."),
    max_epochs: int = typer.Option(None, help="Epoch budget."),
    max_minutes: float = typer.Option(None, help="Wall-clock budget in minutes."),
    seed: int = typer.Option(None),
    device: str = typer.Option(None, help="auto (CUDA when available), cpu, cuda, cuda:N."),
    data_dir: Path = typer.Option(None, help="Where the dataset lives."),
    exact_vjp: str = typer.Option(None, help="serene-exact's C products: vectorized (default) or loop (faster on "
                                             "CPU conv nets)."),
    prune: str = typer.Option(None, help="What a threshold step prunes: neurons (default: whole channels with their "
                                         "BN, a faster slim model), weights (SeReNe eq. 22) or both."),
    neuron_score: str = typer.Option(None, help="Neuron ranking for --prune neurons|both: taylor (default, loss-based), "
                                                "norm or gamma."),
    neuron_cost: str = typer.Option(None, help="Divide a neuron's score by its cost before ranking: none (default), "
                                               "macs (at equal loss, prune what saves most computation first) or "
                                               "latency:TABLE (its measured marginal latency, `edgeprune profile`)."),
    latency_table: Path = typer.Option(None, help="Latency table (`edgeprune profile`) to predict the slim model's "
                                                  "latency and stop at a target, whatever the ranking."),
    target_latency: float = typer.Option(None, help="Stop pruning at this predicted latency (ms, the table's device); "
                                                    "the accuracy target still holds."),
    target_speedup: float = typer.Option(None, help="Stop pruning at this predicted speedup over the table's dense "
                                                    "latency; the accuracy target still holds."),
    latency_penalty: bool = typer.Option(None, "--latency-penalty/--no-latency-penalty",
                                         help="Weight SeReNe's λ per neuron by its marginal latency (the table's)."),
    final_step: bool = typer.Option(None, "--final-step/--no-final-step",
                                    help="At the end, one more bisection under the accuracy target (default on)."),
    conv_sensitivity: str = typer.Option(None, help="Conv filter sensitivity over positions: mean (default, as the "
                                                    "paper) or sum."),
    preset: str = typer.Option(None, help="Paper hyper-parameters: lenet300-mnist, lenet5-mnist, lenet5-fmnist, "
                                          "vgg16-cifar10, resnet32-cifar10, alexnet-cifar100."),
    config: Path = typer.Option(None, "--config", help="A CompressConfig JSON file (options given here override it)."),
    round_channels: int = typer.Option(None, help="Surgery keeps widths multiples of N (fast vectorized kernels)."),
    no_surgery: bool = typer.Option(False, "--no-surgery", help="Ship the masked model; do not cut dead neurons out."),
    formats: str = typer.Option("onnx,ptl,ort", help="Exports of baseline and slim model: any of onnx,ptl,ort, or none."),
    out: Path = typer.Option(None, help="Run folder to write."),
    resume: Path = typer.Option(None, help="Continue the interrupted run in this folder."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quantize: str = typer.Option("none", help="int8: also ship the slim model as INT8 (model.int8.onnx/.ort/.7z), "
                                              "gated on the test split (see `edgeprune export --help`)."),
    quant_mode: str = typer.Option("static", help="INT8: static (QDQ, calibrated) or dynamic (Linear layers)."),
    calibration: str = typer.Option("minmax", help="INT8 static: minmax, entropy or percentile."),
    calibration_samples: int = typer.Option(256, help="INT8 static: training images used for calibration."),
    max_int8_drop: float = typer.Option(0.5, help="INT8 gate: largest allowed test top-1 error increase (pt)."),
    keep_int8: bool = typer.Option(False, help="Ship the INT8 model even when it misses --max-int8-drop."),
) -> None:
    """Regularize with neuron sensitivity and threshold until the validation accuracy target (SeReNe Alg. 1)."""
    from .. import distributed
    from ..errors import ConfigError
    from ..pipeline import StageOptions, model_of_run, resume_config, run_compress
    from ..regularize.config import make_config

    names = tuple(f.strip() for f in formats.split(",") if f.strip() and f.strip() != "none")
    if neuron_cost and neuron_cost.startswith("latency:") and len(neuron_cost) > len("latency:"):
        neuron_cost = f"latency:{Path(neuron_cost[len('latency:'):]).resolve()}"  # a resumed run finds it anywhere
    if latency_table is not None:
        latency_table = latency_table.resolve()
    options = StageOptions(surgery=not no_surgery, round_channels=round_channels, export_formats=names,
                           quantize=_quantize_options(quantize, quant_mode, calibration, calibration_samples,
                                                      max_int8_drop, keep_int8))

    if resume is not None:
        if out is not None and Path(out) != Path(resume):
            raise ConfigError("--resume RUN continues RUN in place; drop --out or give the same folder")
        cfg = resume_config(resume, max_epochs=max_epochs, max_minutes=max_minutes, device=device)
        with distributed.session(cfg.device):  # a process group when launched by torchrun, else nothing
            summary = run_compress(str(model) if model else model_of_run(resume), resume, cfg, resume=True)
            main = distributed.is_main()
        run_dir = resume
    else:
        if model is None:
            raise ConfigError("give the model checkpoint to compress (MODEL), or --resume RUN")
        if out is None:
            raise ConfigError("give the run folder with --out RUN")
        cfg = make_config(preset, config, method=method, lam=lam, twt=twt, pwe=pwe, lr=lr, momentum=momentum,
                          weight_decay=weight_decay, batch_size=batch_size, target_drop=target_drop,
                          max_epochs=max_epochs, max_minutes=max_minutes, seed=seed, device=device,
                          dataset=dataset, data_dir=str(data_dir) if data_dir else None, exact_vjp=exact_vjp,
                          prune=prune, neuron_score=neuron_score, neuron_cost=neuron_cost, final_step=final_step,
                          conv_sensitivity=conv_sensitivity,
                          latency_table=str(latency_table) if latency_table else None,
                          target_latency=target_latency, target_speedup=target_speedup,
                          latency_penalty=latency_penalty)
        if cfg.latency_table is not None:  # refuse a foreign table before the run folder exists
            from ..latency import check_table_for_run

            check_table_for_run(cfg.latency_table, model, round_channels=round_channels if not no_surgery else None,
                                prune=cfg.prune)
        created = not Path(out).exists()
        try:
            with distributed.session(cfg.device):
                summary = run_compress(model, out, cfg, options=options)
                main = distributed.is_main()
        except BaseException:
            _remove_if_empty(Path(out), created)
            raise
        run_dir = out
    if not main:
        return  # rank 0 reports
    if json_out:
        import json

        echo(json.dumps(summary, indent=2, default=str))
        _int8_verdict(summary)
        return
    from rich.table import Table

    b, p = summary["baseline"], summary["pruned"]
    table = Table(title=f"{summary['method']} on {summary['dataset']}  ({run_dir})")
    table.add_column("")
    table.add_column("baseline", justify="right")
    table.add_column("pruned", justify="right")
    table.add_row("params (nonzero)", f"{b['params_nonzero']:,}", f"{p['params_nonzero']:,}")
    table.add_row("neurons", "-".join(f"[{n}]" for n in b["neurons"]), "-".join(f"[{n}]" for n in p["neurons"]))
    table.add_row("MACs", f"{b['macs']:,}", f"{p['macs']:,}")
    table.add_row("top-1 error", f"{b['top1_error']:.2%}", f"{p['top1_error']:.2%}")
    if "slim" in summary:
        s = summary["slim"]
        table.add_row("slim model (surgery)", "", f"{s['params_total']:,} params, MACs {s['macs']:,}")
    print_table(table)
    final = summary.get("final_step") or {}
    extra = f", final step +{final.get('neurons_pruned', 0)} neurons" if final else ""
    echo(f"compression ratio {summary['compression_ratio']:.2f}x after {summary['epochs']} epochs, "
         f"{len(summary['thresholds'])} threshold steps ({summary['stop_reason']}{extra})")
    lat = summary.get("latency")
    if lat:
        echo(latency_line(lat, summary.get("stop_reason")))
    written = [n for n in ("masked.pt", "model.pt", "model.onnx", "model.ptl", "model.ort", "report.md")
               if (Path(run_dir) / n).exists()]
    echo(f"wrote {run_dir}: {', '.join(written)}")
    _int8_verdict(summary)


def _remove_if_empty(folder: Path, created: bool) -> None:
    """A refused run leaves nothing behind: the --out folder it created goes when nothing was written into it."""
    if created and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _quantize_options(quantize, mode, calibration, samples, max_drop, keep) -> dict | None:
    from ..export.quantize import QuantizeConfig, parse_quantize

    if not parse_quantize(quantize):
        return None
    return QuantizeConfig(mode=mode, calibration=calibration, calibration_samples=samples, max_drop=max_drop,
                          keep_failed=keep).to_dict()


def _int8_verdict(summary: dict) -> None:
    """Say how the INT8 model did; a missed gate exits 1 (the float model.* stays the artifact)."""
    from ..errors import QuantizationGateError

    q = summary.get("int8")
    if not q:
        return
    echo(f"INT8 gate: test top-1 error {100 * q['int8']['top1_error']:.2f}% vs float "
         f"{100 * q['float']['top1_error']:.2f}% ({q['drop_pt']:+.2f} pt, limit {q['max_drop_pt']:g} pt): "
         f"{'passed' if q['passed'] else 'MISSED'}" + (", model.int8.* shipped" if q["shipped"] else ""))
    if not q["shipped"]:
        from ..export.quantize import gate_message

        raise QuantizationGateError(gate_message({**q, "stem": "model"}))


_STOPPED = {"max_epochs": "the epoch budget (--max-epochs)", "max_minutes": "the time budget (--max-minutes)"}


def latency_line(lat: dict, stop_reason: str | None = None) -> str:
    """The final line of a run with a latency table (compress.json ``latency``): predicted (and measured) latency,
    and whether the target was reached (if not, what stopped the pruning first: ``stop_reason``)."""
    m = lat.get("measured")
    target = ""
    if lat.get("target_ms") is not None:
        target = f", target {lat['target_ms']:.4f} ms" + (
            " reached" if lat.get("predicted_meets_target") else
            f" not reached: {_STOPPED.get(stop_reason, 'the accuracy target')} stopped pruning first")
    return (f"latency on {lat['device']}: predicted {lat['predicted_ms']:.4f} ms ({lat['predicted_speedup']:.2f}x)"
            + (f", measured {m['slim_ms']:.4f} ms ({m['speedup']:.2f}x), prediction error {m['error']:+.1%}"
               if m else "") + target)
