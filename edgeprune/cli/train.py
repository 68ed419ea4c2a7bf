"""`edgeprune train`: train a baseline model from the zoo."""

from __future__ import annotations

from pathlib import Path

import typer

from ._app import app, echo, parse_json_object


@app.command()
def train(
    arch: str = typer.Option("lenet5", help="Zoo architecture (see `edgeprune info --list`), torchvision:NAME, "
                                            "timm:NAME, or your own code: package.module:factory or file.py:factory."),
    arch_kwargs: str = typer.Option(None, help="JSON keyword arguments of the architecture, e.g. '{\"width\": 32}'."),
    weights: Path = typer.Option(None, help="Initial weights from a local .safetensors or state_dict file (a head "
                                            "for another class count stays at initialization); never downloaded."),
    dataset: str = typer.Option("fashion-mnist", help="fashion-mnist, mnist, cifar10, cifar100 or imagefolder:PATH."),
    image_size: str = typer.Option(None, help="Input size N or HxW (default: the data's own; image folders: "
                                              "detected)."),
    channels: int = typer.Option(None, help="1 or 3 input channels (default: the data's own; image folders: 1 when "
                                            "every image is grayscale)."),
    resize: str = typer.Option("crop", help="Fitting images of another size: crop (scale the shorter side, "
                                            "center-crop), stretch, or pad (center on black)."),
    mean: str = typer.Option(None, help="Normalization mean per channel, e.g. 0.5 or 0.485,0.456,0.406 (default: "
                                        "computed on the training split / the dataset's published one)."),
    std: str = typer.Option(None, help="Normalization std per channel (with --mean)."),
    workers: int = typer.Option(None, help="Image-folder decoding processes (default: automatic)."),
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
    from ..data.options import ImageOptions
    from ..train import TrainConfig
    from ..train import train as run_train

    config = TrainConfig(arch=arch, dataset=dataset, epochs=epochs, lr=lr, batch_size=batch_size, momentum=momentum,
                         weight_decay=weight_decay, seed=seed, device=device,
                         data_dir=str(data_dir) if data_dir else None, download=download,
                         arch_kwargs=parse_json_object(arch_kwargs, "--arch-kwargs"),
                         data_options=ImageOptions(image_size=image_size, channels=channels, resize=resize, mean=mean,
                                                   std=std).to_dict(),
                         weights=str(weights) if weights else None, workers=workers)
    with distributed.session(config.device):  # a process group when launched by torchrun, else nothing
        result = run_train(config, out, resume=resume)
        main = distributed.is_main()
    if not main:
        return
    echo(f"saved {result['path']}: best epoch {result['best_epoch']}, val accuracy {result['val_accuracy']:.2%}, "
         f"test top-1 error {result['top1_error']:.2%} ({result['train_seconds']:.0f} s)")
