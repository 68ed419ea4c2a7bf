"""Slim checkpoints: weights-only files that rebuild from their arch spec; surgery_checkpoint and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from edgeprune.checkpoint import build_model, load_checkpoint, save_checkpoint
from edgeprune.cli import main
from edgeprune.models import create_model, input_shape_of
from edgeprune.surgery import surgery, surgery_checkpoint
from edgeprune.surgery.synthetic import kill_conv_groups, kill_random_channels, randomize_bn


pytestmark = pytest.mark.usefixtures("one_thread")


def masked_model(name, shape, seed=0, constant_fraction=0.5):
    m = create_model(name).eval()
    randomize_bn(m, seed)
    kill_random_channels(m, shape, 0.5, constant_fraction, seed)
    return m


@pytest.mark.parametrize("name,shape", [
    ("resnet32-cifar", None),
    ("unet-small", (3, 32, 32)),
    ("torchvision:mobilenet_v2", (3, 64, 64)),  # folds constants into 1x1 convs that had no bias
])
def test_round_trip_reproduces_outputs(tmp_path, name, shape):
    shape = shape or input_shape_of(name)
    m = masked_model(name, shape)
    res = surgery(m, shape, round_channels=4)
    spec = res.model.edgeprune_arch
    json.dumps(spec)  # the architecture is plain data
    assert spec["surgery"]["steps"] and spec["name"] == name
    if name.endswith("mobilenet_v2"):
        assert spec["surgery"]["bias_added"]
    path = save_checkpoint(tmp_path / "slim.pt", res.model)
    raw = torch.load(path, weights_only=True)
    assert raw["arch"]["surgery"] == spec["surgery"]
    loaded = load_checkpoint(path)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), res.model(x))
    assert sum(p.numel() for p in loaded.model.parameters()) == res.report["params_after"]


def test_second_surgery_appends_steps(tmp_path):
    shape = (1, 8, 8)
    m = masked_model("tiny-resnet", shape, seed=1, constant_fraction=0.0)
    first = surgery(m, shape).model
    kill_random_channels(first, shape, 0.4, 0.0, seed=2)
    second = surgery(first, shape)
    steps = second.model.edgeprune_arch["surgery"]["steps"]
    assert len(steps) > len(first.edgeprune_arch["surgery"]["steps"])
    rebuilt = build_model(second.model.edgeprune_arch)
    rebuilt.load_state_dict(second.model.state_dict())
    x = torch.randn(3, *shape)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), second.model(x))


def test_grouped_cuts_rebuild_from_the_spec(tmp_path):
    """RegNetX-400MF with whole groups of its grouped convs dead: the spec records the group cuts (version 2), the
    checkpoint rebuilds bit for bit, and a second surgery on the slim model appends to the same spec."""
    name, shape = "torchvision:regnet_x_400mf", (3, 64, 64)
    m = create_model(name).eval()
    randomize_bn(m, 0)
    kill_conv_groups(m, shape, seed=3)
    kill_random_channels(m, shape, 0.3, 0.3, seed=4)
    first = surgery(m, shape).model
    spec = first.edgeprune_arch["surgery"]
    json.dumps(spec)
    assert spec["version"] == 2 and any(step[1] == "cut_conv_groups" for step in spec["steps"])
    kill_conv_groups(first, shape, fraction=0.3, seed=5)
    second = surgery(first, shape).model
    steps = second.edgeprune_arch["surgery"]["steps"]
    assert len(steps) > len(spec["steps"]) and steps[:len(spec["steps"])] == spec["steps"]
    path = save_checkpoint(tmp_path / "slim.pt", second)
    loaded = load_checkpoint(path)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), second(x))
        assert (second(x) - first(x)).abs().max() <= 1e-5 * first(x).abs().max()  # first: killed again
    assert [mod.groups for mod in loaded.model.modules() if getattr(mod, "groups", 1) > 1] == \
        [mod.groups for mod in second.modules() if getattr(mod, "groups", 1) > 1]


def test_surgery_checkpoint_copies_meta(tmp_path):
    shape = input_shape_of("lenet5")
    m = masked_model("lenet5", shape)
    src = save_checkpoint(tmp_path / "masked.pt", m, meta={"dataset": "fashion-mnist", "input_shape": list(shape),
                                                           "top1_error": 0.1})
    res = surgery_checkpoint(src, tmp_path / "slim.pt")
    loaded = load_checkpoint(tmp_path / "slim.pt")
    assert loaded.meta["dataset"] == "fashion-mnist" and loaded.meta["top1_error"] == 0.1
    assert loaded.meta["surgery_report"]["params_after"] == res.report["params_after"] < res.report["params_before"]
    x = torch.randn(2, *shape)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), m(x), atol=1e-5 * float(m(x).abs().max()))
    assert [p.name for p in tmp_path.iterdir()] and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli(tmp_path, capsys):
    shape = input_shape_of("tiny-cnn")
    m = masked_model("tiny-cnn", shape)
    src = save_checkpoint(tmp_path / "masked.pt", m, meta={"input_shape": list(shape)})
    assert main(["surgery", str(src), "--out", str(tmp_path / "slim.pt"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["params_after"] < report["params_before"]
    assert load_checkpoint(tmp_path / "slim.pt").meta["surgery_report"]["params_after"] == report["params_after"]
    assert main(["surgery", str(src), "--out", str(tmp_path / "slim8.pt"), "--round-channels", "2"]) == 0
    out = capsys.readouterr().out
    assert "→" in out and "max |Δ|" in out
    assert main(["surgery", str(src), "--out", str(tmp_path / "x.pt"), "--round-channels", "0"]) == 1
    assert "round_channels" in capsys.readouterr().err
    assert main(["surgery", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "y.pt")]) == 1
    assert "no such file" in capsys.readouterr().err


@pytest.mark.realdata
def test_cli_with_a_real_batch(tmp_path, capsys):
    shape = (1, 28, 28)
    m = masked_model("lenet5", shape)
    src = save_checkpoint(tmp_path / "masked.pt", m, meta={"input_shape": list(shape)})
    args = ["surgery", str(src), "--out", str(tmp_path / "slim.pt"), "--dataset", "fashion-mnist", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["real_samples"] == 64
    assert report["verification"]["relative_diff"] <= 1e-5
