"""`edgeprune train` / `edgeprune compress` launched by torchrun (2 CPU processes, Gloo): training equals one process
over the same global batches; a rank killed mid-run ends the job with a clear message and a loadable checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _synthetic import make_mnist_like
from edgeprune.checkpoint import load_checkpoint
from edgeprune.cli import main

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _torchrun_cmd(args: list[str], nproc: int = 2) -> list[str]:
    # A slow monitor lets the surviving rank print its message before torchrun stops it.
    return [str(TORCHRUN), "--standalone", "--nproc_per_node", str(nproc), "--monitor-interval", "2",
            "-m", "edgeprune", *args]


def _env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "EDGEPRUNE_PROGRESS": "0", **extra}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Baseline training under torchrun (DistributedDataParallel) and the same run in one process."""
    folder = tmp_path_factory.mktemp("ddp")
    data = make_mnist_like(folder / "data", n_train=320, n_test=60)
    args = ["--arch", "lenet300", "--dataset", "mnist", "--data-dir", str(data), "--epochs", "2", "--lr", "0.05",
            "--batch-size", "32", "--device", "cpu"]
    proc = subprocess.run(_torchrun_cmd(["train", *args, "--out", str(folder / "ddp.pt")]), cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", *args, "--out", str(folder / "one.pt")]) == 0
    finally:
        torch.set_num_threads(n)
    return folder, data, proc


def test_train_under_torchrun_equals_one_process(trained):
    folder, _, proc = trained
    ddp, one = load_checkpoint(folder / "ddp.pt"), load_checkpoint(folder / "one.pt")
    assert proc.stdout.count("saved ") == 1  # rank 0 alone reports
    assert not (folder / "ddp.pt.resume.pt").exists()
    assert ddp.meta["best_epoch"] == one.meta["best_epoch"]
    assert ddp.meta["test_accuracy"] == one.meta["test_accuracy"]
    moved = 0.0
    for k, v in one.model.state_dict().items():
        torch.testing.assert_close(ddp.model.state_dict()[k], v, rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
        moved = max(moved, float((v - one.extra["init_state_dict"][k]).abs().max()))
    assert moved > 1e-3  # training changed the weights: the comparison is not of two initializations


def _rank_pid(launcher: subprocess.Popen, rank: int) -> int | None:
    """The worker torchrun started for ``rank`` (its children carry RANK in their environment)."""
    for child in Path("/proc").iterdir():
        if not child.name.isdigit():
            continue
        try:
            stat = (child / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            env = (child / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher.pid and f"RANK={rank}".encode() in env:
            return int(child.name)
    return None


def _compress_then(trained, run: Path, action, **env) -> tuple[subprocess.Popen, str]:
    """Start a long compress under torchrun, call ``action(rank0_pid, rank1_pid)`` after the first saved epoch,
    return the finished launcher and its stderr."""
    folder, data, _ = trained
    cmd = _torchrun_cmd(["compress", str(folder / "one.pt"), "--data-dir", str(data), "--out", str(run),
                         "--max-epochs", "500", "--pwe", "3", "--batch-size", "20", "--lr", "0.01",
                         "--target-drop", "0.9", "--device", "cpu"])
    launcher = subprocess.Popen(cmd, cwd=ROOT, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    try:
        deadline = time.monotonic() + 180
        while not (run / "state.pt").exists():
            assert launcher.poll() is None, launcher.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no epoch completed"
            time.sleep(0.1)
        pids = _rank_pid(launcher, 0), _rank_pid(launcher, 1)
        assert None not in pids
        action(*pids)
        _, err = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    return launcher, err


def test_killed_rank_ends_the_job_clearly_and_the_checkpoint_resumes(trained, tmp_path):
    run = tmp_path / "run"
    launcher, err = _compress_then(trained, run, lambda r0, r1: os.kill(r1, signal.SIGKILL))
    assert launcher.returncode != 0
    assert "another process of this torchrun job failed or stopped responding" in err  # rank 0's one line
    assert "rank      : 1" in err and "SIGKILL" in err  # torchrun's report names the killed rank
    assert not (run / "masked.pt").exists()
    saved = torch.load(run / "state.pt", map_location="cpu", weights_only=True)
    assert saved["epoch"] >= 1
    # The checkpoint rank 0 left continues in one process (the global batch is unchanged).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["compress", "--resume", str(run), "--max-epochs", str(saved["epoch"] + 1), "--json"]) == 0
    finally:
        torch.set_num_threads(n)
    assert load_checkpoint(run / "masked.pt").meta["compress"]["epochs"] == saved["epoch"] + 1


def test_hung_rank_times_out_with_the_same_message(trained, tmp_path):
    """A rank that stops responding (SIGSTOP) fails the others' next collective after EDGEPRUNE_DIST_TIMEOUT."""

    def hang(r0: int, r1: int) -> None:
        os.kill(r1, signal.SIGSTOP)
        deadline = time.monotonic() + 60
        while Path(f"/proc/{r0}").exists() and "Z" not in _state(r0) and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(r1, signal.SIGCONT)  # let torchrun's SIGTERM reach it instead of waiting out its kill grace

    launcher, err = _compress_then(trained, tmp_path / "run", hang, EDGEPRUNE_DIST_TIMEOUT="3")
    assert launcher.returncode != 0
    assert "rank 0/2: another process of this torchrun job failed or stopped responding" in err
    assert "Timed out" in err  # the bounded process-group timeout, not a closed connection
    saved = torch.load(tmp_path / "run" / "state.pt", map_location="cpu", weights_only=True)
    # Every rank of a new torchrun job loads the same state and continues.
    proc = subprocess.run(_torchrun_cmd(["compress", "--resume", str(tmp_path / "run"), "--max-epochs",
                                         str(saved["epoch"] + 1), "--json"]),
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["epochs"] == saved["epoch"] + 1  # one JSON document: rank 0 alone prints
    assert load_checkpoint(tmp_path / "run" / "masked.pt").meta["compress"]["epochs"] == saved["epoch"] + 1


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def test_batch_size_must_split_evenly_across_ranks(trained, tmp_path):
    folder, data, _ = trained
    proc = subprocess.run(_torchrun_cmd(["compress", str(folder / "one.pt"), "--data-dir", str(data), "--out",
                                         str(tmp_path / "run"), "--batch-size", "21", "--device", "cpu"]),
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "error: --batch-size 21 is not divisible by the 2 processes" in proc.stderr
