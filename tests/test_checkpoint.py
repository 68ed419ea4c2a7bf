"""Checkpoints load with weights_only=True, rebuild from data, and refuse anything unsafe or broken clearly."""

from __future__ import annotations

import io

import pytest
import torch

from edgeprune.checkpoint import load_checkpoint, save_checkpoint
from edgeprune.errors import CheckpointError
from edgeprune.models import create_model


def _same_outputs(a, b, shape=(2, 1, 28, 28)):
    x = torch.randn(*shape)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_round_trip_is_weights_only(tmp_path):
    model = create_model("lenet5", num_classes=10)
    path = save_checkpoint(tmp_path / "m.pt", model, meta={"dataset": "fashion-mnist", "top1_error": 0.09},
                           extra={"init_state_dict": model.state_dict()})
    raw = torch.load(path, weights_only=True)  # the contract: no pickled code needed
    assert raw["arch"] == {"name": "lenet5", "kwargs": {"num_classes": 10}}
    loaded = load_checkpoint(path)
    assert _same_outputs(model, loaded.model)
    assert loaded.meta["dataset"] == "fashion-mnist" and "torch" in loaded.meta["versions"]
    assert set(loaded.extra) == {"init_state_dict"}
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_plain_state_dict_needs_arch(tmp_path):
    model = create_model("lenet300")
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="plain state_dict.*--arch"):
        load_checkpoint(tmp_path / "sd.pt")
    loaded = load_checkpoint(tmp_path / "sd.pt", arch="lenet300")
    assert _same_outputs(model, loaded.model)
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "wrapped.pt")
    assert _same_outputs(model, load_checkpoint(tmp_path / "wrapped.pt", arch="lenet300").model)


def test_wrong_architecture_is_named(tmp_path):
    torch.save(create_model("lenet300").state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="does not match architecture lenet5"):
        load_checkpoint(tmp_path / "sd.pt", arch="lenet5")
    torch.save(create_model("lenet5", num_classes=3).state_dict(), tmp_path / "c3.pt")
    with pytest.raises(CheckpointError, match=r"shape .*num_classes"):
        load_checkpoint(tmp_path / "c3.pt", arch="lenet5")


def test_pickled_module_refused_unless_trusted(tmp_path):
    model = create_model("tiny-mlp")
    torch.save(model, tmp_path / "full.pt")
    with pytest.raises(CheckpointError, match="arbitrary code.*--trust-pickle"):
        load_checkpoint(tmp_path / "full.pt")
    loaded = load_checkpoint(tmp_path / "full.pt", trust_pickle=True)
    assert _same_outputs(model, loaded.model, (2, 1, 4, 4))
    assert loaded.arch == {"name": "tiny-mlp", "kwargs": {}}


def test_torchscript_refused(tmp_path):
    scripted = torch.jit.trace(create_model("tiny-mlp").eval(), torch.randn(1, 1, 4, 4))
    scripted.save(str(tmp_path / "ts.pt"))
    with pytest.raises(CheckpointError, match="TorchScript.*cannot be trained"):
        load_checkpoint(tmp_path / "ts.pt")


def test_onnx_refused(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")
    with pytest.raises(CheckpointError, match="ONNX"):
        load_checkpoint(tmp_path / "m.onnx")


@pytest.mark.parametrize("cut", [10, 200, -50])
def test_truncated_and_corrupt(tmp_path, cut):
    buf = io.BytesIO()
    torch.save({"format": "edgeprune-checkpoint"}, buf)
    save_checkpoint(tmp_path / "ok.pt", create_model("tiny-mlp"))
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "bad.pt").write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match="corrupt|truncated"):
        load_checkpoint(tmp_path / "bad.pt")


def test_garbage_and_missing(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"hello world, not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt|not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)


def test_newer_format_refused(tmp_path):
    torch.save({"format": "edgeprune-checkpoint", "version": 99, "arch": {"name": "tiny-mlp", "kwargs": {}},
                "state_dict": {}, "meta": {}}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="newer edgeprune"):
        load_checkpoint(tmp_path / "new.pt")


def test_weights_error_lines_say_what_is_read_and_what_to_do(tmp_path):
    import torch

    from edgeprune.checkpoint import read_weights
    from edgeprune.errors import CheckpointError

    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"e" * 300)
    with pytest.raises(CheckpointError) as err:
        read_weights(junk)
    msg = str(err.value)
    assert "safetensors" in msg and "torch.save(model.state_dict()" in msg and "weights-only" in msg

    nodict = tmp_path / "nodict.pt"
    torch.save({"a": 1}, nodict)
    with pytest.raises(CheckpointError) as err:
        read_weights(nodict)
    msg = str(err.value)
    assert "holds no state_dict" in msg and "top-level keys: a" in msg and "torch.save(model.state_dict()" in msg
