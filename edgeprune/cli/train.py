"""`edgeprune train`: train a baseline model from the zoo."""

from __future__ import annotations

from pathlib import Path

import typer

from ._app import app, echo


@app.command()
def train(
    arch: str = typer.Option("lenet5", help="Zoo architecture (see `edgeprune info --list`) or torchvision:NAME."),
    dataset: str = typer.Option("fashion-mnist", help="fashion-mnist, mnist, cifar10, cifar100 or imagefolder:PATH."),
    epochs: int = typer.Option(20, min=1),
    lr: float = typer.Option(0.05, help="SGD learning rate (cosine-annealed to 0)."),
    batch_size: int = typer.Option(128, min=1),
    momentum: float = typer.Option(0.9),
    weight_decay: float = typer.Option(5e-4),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto (CUDA when available), cpu, cuda, cuda:N."),
    data_dir: Path = typer.Option(None, help="Where the dataset lives (else $EDGEPRUNE_DATA, cache, system dirs)."),
    download: bool = typer.Option(False, help="Allow downloading the dataset when it is not found."),
    out: Path = typer.Option(Path("base.pt"), help="Checkpoint to write."),
    resume: bool = typer.Option(False, help="Continue from OUT.resume.pt left by an interrupted run."),
) -> None:
    """Train a baseline with SGD; keep the best epoch on validation; report test top-1 error."""
    from .. import distributed
    from ..train import TrainConfig
    from ..train import train as run_train

    config = TrainConfig(arch=arch, dataset=dataset, epochs=epochs, lr=lr, batch_size=batch_size, momentum=momentum,
                         weight_decay=weight_decay, seed=seed, device=device,
                         data_dir=str(data_dir) if data_dir else None, download=download)
    with distributed.session(config.device):  # a process group when launched by torchrun, else nothing
        result = run_train(config, out, resume=resume)
        main = distributed.is_main()
    if not main:
        return
    echo(f"saved {result['path']}: best epoch {result['best_epoch']}, val accuracy {result['val_accuracy']:.2%}, "
         f"test top-1 error {result['top1_error']:.2%} ({result['train_seconds']:.0f} s)")
