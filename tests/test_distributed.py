"""Data-parallel SeReNe / LOBSTER under torchrun (2 CPU processes, Gloo) against one process over the same global
batches: sensitivities, gradients, thresholds, masks and final weights agree; ranks agree on every T.

This file is also the worker torchrun launches (``python tests/test_distributed.py worker DIR``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
GLOBAL_BATCH = 16
METHODS = {"serene-lb": 0.01, "lobster": 0.01, "serene-exact": 0.01, "serene-ub": 0.01, "serene-local": 0.01}


def torchrun(args: list[str], nproc: int = 2, timeout: float = 240, env: dict | None = None):
    """Launch under torchrun on this machine (a free rendezvous port), one thread per process."""
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", str(nproc), *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "EDGEPRUNE_PROGRESS": "0", **(env or {})}
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)


def _split(n: int, g: torch.Generator):
    from edgeprune.data import TensorSplit

    x = torch.randn(n, 1, 4, 4, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    for k in range(3):
        x[y == k, 0, k] += 1.5  # class k: row k brighter (learnable by tiny-mlp)
    return TensorSplit(x, y)


def make_inputs(folder: Path) -> None:
    """A trained tiny-mlp and a synthetic bundle (96 train = 6 global batches; odd val/test sizes)."""
    from edgeprune.checkpoint import save_checkpoint
    from edgeprune.data import Batches
    from edgeprune.models import create_model
    from edgeprune.train import train_epoch

    g = torch.Generator().manual_seed(0)
    splits = {"train": _split(96, g), "val": _split(51, g), "test": _split(31, g)}
    torch.save({k: (s.x, s.y) for k, s in splits.items()}, folder / "data.pt")
    torch.manual_seed(0)
    model = create_model("tiny-mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.2)  # short: the loop below still improves it (not vacuous)
    for e in range(6):
        b = Batches(splits["train"], 16, shuffle=True)
        b.set_epoch(e)
        train_epoch(model, b, opt)
    save_checkpoint(folder / "base.pt", model, meta={"dataset": "synthetic"})


def worker(folder: Path) -> None:
    """One process of the comparison (or the single-process reference when not under torchrun): writes
    ``result-<tag>-rank<r>.pt`` with one step's sensitivities/gradients and a whole serene_ run per method."""
    from edgeprune import distributed
    from edgeprune.checkpoint import load_checkpoint
    from edgeprune.data import DataBundle, TensorSplit
    from edgeprune.regularize.config import CompressConfig
    from edgeprune.regularize.loop import serene_
    from edgeprune.regularize.update import Regularizer
    from edgeprune.threshold import full_masks

    torch.set_num_threads(1)
    with distributed.session("cpu"):
        r, w = distributed.rank(), distributed.world_size()
        tag = f"w{w}"
        raw = torch.load(folder / "data.pt", weights_only=True)
        data = DataBundle("synthetic", *(TensorSplit(*raw[k]) for k in ("train", "val", "test")), (1, 4, 4), 3, "")
        out = {}
        for method, lam in METHODS.items():
            # One step on the first global batch: this rank's interleaved slice (Batches' sharding: r, r+W, …).
            model = load_checkpoint(folder / "base.pt").model
            x, y = data.train.x[:GLOBAL_BATCH][r::w], data.train.y[:GLOBAL_BATCH][r::w]
            stepper = distributed.wrap_ddp(model) if w > 1 else model
            with Regularizer(model, method, lam, full_masks(model),
                             reduce_fn=distributed.average_values if w > 1 else None) as reg:
                reg.set_capture(True)
                logits = stepper(x)
                torch.nn.functional.cross_entropy(logits, y).backward(retain_graph=reg.needs_graph)
                reg.after_backward(x, logits)
                step = {"pending": {k: v.clone() for k, v in reg._pending.items()},
                        "grads": {n: p.grad.clone() for n, p in model.named_parameters()}}
            # The whole regularize ⇄ threshold loop.
            model = load_checkpoint(folder / "base.pt").model
            # Nine epochs that improve, then a threshold step: training, sensitivities and T all matter.
            cfg = CompressConfig(method=method, lam=lam, twt=0.5, pwe=1, prune="weights", lr=0.2, max_epochs=10,
                                 batch_size=GLOBAL_BATCH, target_drop=0.3, device="cpu")
            state = folder / f"state-{tag}-{method}.pt"
            res = serene_(model, data, cfg, state_path=state)
            out[method] = {"step": step, "thresholds": res.thresholds, "masks": res.masks, "epochs": res.epochs,
                           "state": {k: v.clone() for k, v in res.model.state_dict().items()},
                           "final_val": res.final_val, "state_written": state.exists()}
        if w > 1:
            out["batchnorm"] = _batchnorm_run(folder, tag)
        torch.save(out, folder / f"result-{tag}-rank{r}.pt")


def _batchnorm_run(folder: Path, tag: str) -> dict:
    """tiny-cnn (BatchNorm: per-rank batch statistics, running statistics averaged before evaluation)."""
    from edgeprune.data import DataBundle
    from edgeprune.models import create_model
    from edgeprune.regularize.config import CompressConfig
    from edgeprune.regularize.loop import serene_

    g = torch.Generator().manual_seed(3)
    splits = []
    for n in (64, 33, 20):
        s = _split(n, g)
        splits.append(type(s)(torch.nn.functional.interpolate(s.x, size=(8, 8)), s.y))
    torch.manual_seed(0)
    model = create_model("tiny-cnn")
    cfg = CompressConfig(method="serene-lb", lam=0.05, twt=0.5, pwe=1, prune="weights", lr=1.0, max_epochs=6,
                         batch_size=GLOBAL_BATCH, target_drop=0.5, device="cpu")
    rows: list[dict] = []
    res = serene_(model, DataBundle("synthetic", *splits, (1, 8, 8), 3, ""), cfg,
                  state_path=folder / f"state-{tag}-bn.pt", emit=rows.append)
    return {"thresholds": res.thresholds, "rows": rows, "state": {k: v.clone() for k, v in res.model.state_dict().items()},
            "masks": res.masks}


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist")
    make_inputs(folder)
    proc = torchrun([str(Path(__file__)), "worker", str(folder)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = subprocess.run([sys.executable, str(Path(__file__)), "worker", str(folder)], cwd=ROOT, capture_output=True,
                         text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert ref.returncode == 0, ref.stderr[-3000:]
    load = lambda name: torch.load(folder / name, weights_only=False)  # noqa: E731 (our own files)
    return load("result-w1-rank0.pt"), [load(f"result-w2-rank{r}.pt") for r in range(2)]


def _close(a: dict, b: dict, **tol) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("method", list(METHODS))
def test_one_step_sensitivities_and_gradients_equal_single_process(compared, method):
    ref, ranks = compared
    for res in ranks:
        _close(res[method]["step"]["grads"], ref[method]["step"]["grads"], rtol=1e-5, atol=1e-7)
        pending = res[method]["step"]["pending"]
        assert pending, "the update rule computed nothing"
        _close(pending, ref[method]["step"]["pending"], rtol=1e-5, atol=1e-7)
    # Every rank applies the identical update: bit-identical across ranks, not merely close.
    for k, v in ranks[0][method]["step"]["pending"].items():
        assert torch.equal(v, ranks[1][method]["step"]["pending"][k])


@pytest.mark.parametrize("method", list(METHODS))
def test_whole_run_masks_weights_thresholds_equal_single_process(compared, method):
    ref, ranks = compared
    want = ref[method]
    assert want["thresholds"], "the reference run never thresholded: the comparison would be vacuous"
    assert sum(int((~m).sum()) for m in want["masks"].values()) > 0
    other = ref["lobster" if method == "serene-lb" else "serene-lb"]
    assert other["thresholds"] != want["thresholds"], "T did not depend on the regularization: vacuous comparison"
    for res in ranks:
        got = res[method]
        assert got["epochs"] == want["epochs"]
        assert got["thresholds"] == pytest.approx(want["thresholds"], rel=1e-5, abs=1e-7)
        for k in want["masks"]:
            assert torch.equal(got["masks"][k], want["masks"][k]), k
        _close(got["state"], want["state"], rtol=1e-4, atol=1e-6)
        assert got["final_val"]["n"] == 51 and got["final_val"]["loss"] == pytest.approx(want["final_val"]["loss"],
                                                                                          rel=1e-5)


@pytest.mark.parametrize("method", list(METHODS))
def test_ranks_agree_on_every_threshold_and_only_rank0_writes(compared, method):
    _, (r0, r1) = compared
    assert r0[method]["thresholds"] == r1[method]["thresholds"]  # exactly: T decided by all-reduced losses
    for k in r0[method]["masks"]:
        assert torch.equal(r0[method]["masks"][k], r1[method]["masks"][k])
    for k in r0[method]["state"]:
        assert torch.equal(r0[method]["state"][k], r1[method]["state"][k])
    assert r0[method]["state_written"] and r1[method]["state_written"]  # the one file rank 0 wrote, seen by both


def test_batchnorm_model_stays_identical_across_ranks(compared):
    _, (r0, r1) = compared
    a, b = r0["batchnorm"], r1["batchnorm"]
    assert a["thresholds"] and a["thresholds"] == b["thresholds"]
    assert any("running_mean" in k for k in a["state"])
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k
    for k in a["masks"]:
        assert torch.equal(a["masks"][k], b["masks"][k]), k



def test_one_process_helpers_are_the_identity_and_bad_launch_options_are_one_line(monkeypatch):
    from edgeprune import distributed
    from edgeprune.data import Batches
    from edgeprune.errors import ConfigError
    from edgeprune.models import create_model
    from edgeprune.train import evaluate

    assert not distributed.is_active() and distributed.is_main() and distributed.world_size() == 1
    split = _split(37, torch.Generator().manual_seed(2))
    model = create_model("tiny-mlp")
    assert distributed.evaluate(model, split, 10, "cpu") == evaluate(model, Batches(split, 10), "cpu")
    values = {"a": torch.ones(3)}
    assert distributed.average_values(values) is values
    assert distributed.per_rank_batch(7) == 7 and distributed.shard(split) is split
    with distributed.session("cpu") as started:
        assert not started  # not launched: no process group
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="--device cuda"):
        distributed.init_from_env("cuda:1")
    monkeypatch.setenv("EDGEPRUNE_DIST_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="EDGEPRUNE_DIST_TIMEOUT"):
        distributed.init_from_env("cpu")


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    sys.path.insert(0, str(ROOT))
    worker(Path(sys.argv[2]))
