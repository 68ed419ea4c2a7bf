"""Your own architecture by reference (a module on the path, a file), timm models, weights from local files, and
`edgeprune compress` end to end on an image folder: slim checkpoints reload from their spec with weights_only."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
import torch.nn as nn

from edgeprune.checkpoint import load_checkpoint, load_weights, save_checkpoint
from edgeprune.cli import main
from edgeprune.errors import CheckpointError, ModelError
from edgeprune.models import create_model, trust_code
from edgeprune.models import _external
from test_own_data import write_folder

pytestmark = pytest.mark.usefixtures("one_thread")

USER_CODE = textwrap.dedent('''
    import torch.nn as nn


    class Net(nn.Module):
        def __init__(self, num_classes=10, in_channels=1, width=8):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = nn.Linear(2 * width, num_classes)

        def forward(self, x):
            return self.head(self.features(x))


    def make_net(**kw):
        return Net(**kw)


    def not_a_model(**kw):
        return 42
''')


@pytest.fixture(autouse=True)
def _fresh_trust(monkeypatch):
    monkeypatch.setattr(_external, "_TRUSTED", set())
    monkeypatch.delenv(_external.TRUST_ENV, raising=False)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A package importable by name (``edgeprune_testpkg_N.nets``) and the same code as a file path."""
    name = f"edgeprune_testpkg_{abs(hash(str(tmp_path))) % 10**8}"
    pkg = tmp_path / "site" / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    (tmp_path / "mynets.py").write_text(USER_CODE)
    yield f"{name}.nets", tmp_path / "mynets.py"
    for mod in [m for m in sys.modules if m.startswith(name)]:
        del sys.modules[mod]


def test_reference_by_module_and_by_file(user_module, tmp_path):
    module, path = user_module
    with pytest.raises(ModelError, match=r"importing it runs that code.*--trust-code"):
        create_model(f"{module}:Net")
    trust_code(module)
    m = create_model(f"{module}:Net", num_classes=5, width=4)
    assert m(torch.randn(2, 1, 12, 12)).shape == (2, 5)
    assert m.edgeprune_arch == {"name": f"{module}:Net", "kwargs": {"num_classes": 5, "width": 4}}
    trust_code(f"{path}:make_net")
    f = create_model(f"{path}:make_net", num_classes=3)
    assert f(torch.randn(1, 1, 8, 8)).shape == (1, 3)
    with pytest.raises(ModelError, match="has no 'nope'.*Net"):
        create_model(f"{module}:nope")
    with pytest.raises(ModelError, match="not a torch.nn.Module"):
        create_model(f"{module}:not_a_model")
    with pytest.raises(ModelError, match="check --arch-kwargs"):
        create_model(f"{module}:Net", depth=3)
    trust_code("no_such_pkg_xyz")
    with pytest.raises(ModelError, match="cannot import 'no_such_pkg_xyz'.*PYTHONPATH"):
        create_model("no_such_pkg_xyz:f")
    with pytest.raises(ModelError, match="--trust-code .*missing.py: no such file"):
        trust_code(str(tmp_path / "missing.py"))


def test_checkpoint_names_code_but_never_imports_it_unasked(user_module, tmp_path, monkeypatch):
    module, _ = user_module
    trust_code(module)
    m = create_model(f"{module}:Net", num_classes=4).eval()
    save_checkpoint(tmp_path / "m.pt", m, meta={"input_shape": [1, 8, 8]})
    raw = torch.load(tmp_path / "m.pt", weights_only=True)  # plain data: no pickled module
    assert raw["arch"] == {"name": f"{module}:Net", "kwargs": {"num_classes": 4}}
    monkeypatch.setattr(_external, "_TRUSTED", set())
    with pytest.raises(CheckpointError, match=rf"m.pt: the architecture is user code '{module}:Net'.*--trust-code"):
        load_checkpoint(tmp_path / "m.pt")
    monkeypatch.setenv(_external.TRUST_ENV, module.split(".")[0])  # a package trusts its sub-modules
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(load_checkpoint(tmp_path / "m.pt").model.eval()(x), m(x))


def test_compress_lenet5_on_gray_folder_end_to_end(tmp_path):
    write_folder(tmp_path / "digits", "L", counts={"train": (20, 15, 25), "test": (5, 4, 6)})
    base = tmp_path / "base.pt"
    data = f"imagefolder:{tmp_path / 'digits'}"
    assert main(["-q", "train", "--arch", "lenet5", "--dataset", data, "--epochs", "2", "--batch-size", "16",
                 "--device", "cpu", "--out", str(base)]) == 0
    run = tmp_path / "run"
    assert main(["-q", "compress", str(base), "--max-epochs", "2", "--pwe", "1", "--lambda", "1e-3", "--device", "cpu",
                 "--formats", "onnx", "--out", str(run)]) == 0
    slim = torch.load(run / "model.pt", weights_only=True)
    assert slim["meta"]["data_options"]["channels"] == 1 and slim["meta"]["input_shape"] == [1, 28, 28]
    assert slim["arch"]["name"] == "lenet5" and slim["arch"]["surgery"]["steps"]
    _assert_slim_matches_masked(run, data)
    assert (run / "model.onnx").exists()


def test_compress_user_model_by_reference_end_to_end(user_module, tmp_path, monkeypatch):
    _, path = user_module
    write_folder(tmp_path / "digits", "RGB", sizes=((12, 12), (14, 10)),
                 counts={"train": (15, 12, 18), "test": (4, 3, 5)})
    data = f"imagefolder:{tmp_path / 'digits'}"
    base = tmp_path / "base.pt"
    monkeypatch.chdir(tmp_path)  # the reference is relative, as a user would type it
    assert main(["-q", "train", "--arch", "mynets.py:Net", "--arch-kwargs", '{"width": 6}', "--dataset", data,
                 "--epochs", "2", "--batch-size", "16", "--device", "cpu", "--out", str(base)]) == 0
    spec = torch.load(base, weights_only=True)["arch"]
    assert spec == {"name": "mynets.py:Net", "kwargs": {"num_classes": 3, "in_channels": 3, "width": 6}}
    monkeypatch.setattr(_external, "_TRUSTED", set())
    run = tmp_path / "run"
    assert main(["-q", "compress", str(base), "--max-epochs", "1", "--device", "cpu", "--formats", "none",
                 "--out", str(run)]) == 1  # not trusted in this process: refused before importing
    assert main(["-q", "--trust-code", "mynets.py", "compress", str(base), "--max-epochs", "2", "--pwe", "1",
                 "--lambda", "1e-3", "--device", "cpu", "--formats", "none", "--out", str(tmp_path / "run2")]) == 0
    slim = torch.load(tmp_path / "run2" / "model.pt", weights_only=True)
    assert slim["arch"]["name"] == "mynets.py:Net" and "surgery" in slim["arch"]
    _assert_slim_matches_masked(tmp_path / "run2", data)


def _assert_slim_matches_masked(run, data_name):
    from edgeprune.data import load_dataset

    masked = load_checkpoint(run / "masked.pt")
    slim = load_checkpoint(run / "model.pt")
    data = load_dataset(data_name, options=slim.meta["data_options"])
    x = data.test.x
    with torch.no_grad():
        a, b = masked.model.eval()(x), slim.model.eval()(x)
    assert torch.allclose(a, b, atol=1e-5 * float(a.abs().max()) + 1e-6)
    dense = sum(p.numel() for p in masked.model.parameters())
    assert sum(p.numel() for p in slim.model.parameters()) < dense


def test_weights_from_local_files_torchvision(tmp_path):
    src = create_model("torchvision:resnet18", num_classes=7)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    dst = create_model("torchvision:resnet18", num_classes=7)
    assert load_weights(dst, tmp_path / "w.pth") == {"loaded": len(src.state_dict()), "skipped": []}
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    other = create_model("torchvision:resnet18", num_classes=3)
    rep = load_weights(other, tmp_path / "w.pth")
    assert rep["skipped"] == ["fc.weight", "fc.bias"]
    assert torch.equal(other.conv1.weight, src.conv1.weight) and other.fc.weight.shape == (3, 512)
    with pytest.raises(CheckpointError, match="does not fit torchvision:resnet34"):
        load_weights(create_model("torchvision:resnet34"), tmp_path / "w.pth")
    torch.save(src, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="cannot be read as weights"):
        load_weights(dst, tmp_path / "pickled.pth")


def test_timm_model_classes_channels_weights(tmp_path):
    pytest.importorskip("timm")
    from safetensors.torch import save_file

    m = create_model("timm:test_resnet", num_classes=4, in_chans=1).eval()
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 4)
    assert m.edgeprune_arch == {"name": "timm:test_resnet", "kwargs": {"num_classes": 4, "in_chans": 1}}
    with pytest.raises(ModelError, match="never downloads"):
        create_model("timm:test_resnet", pretrained=True)
    with pytest.raises(ModelError, match="unknown timm model"):
        create_model("timm:no_such_net_v9")
    src = create_model("timm:test_resnet", num_classes=4, in_chans=1)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    dst = create_model("timm:test_resnet", num_classes=9, in_chans=1)
    rep = load_weights(dst, tmp_path / "w.safetensors")
    assert sorted(rep["skipped"]) == ["fc.bias", "fc.weight"]
    assert torch.equal(dst.conv1[0].weight if isinstance(dst.conv1, nn.Sequential) else dst.conv1.weight,
                       src.conv1[0].weight if isinstance(src.conv1, nn.Sequential) else src.conv1.weight)


def test_timm_surgery_exact_and_reloads(tmp_path):
    pytest.importorskip("timm")
    from edgeprune.surgery import surgery
    from edgeprune.surgery.synthetic import kill_random_channels, randomize_bn

    model = create_model("timm:test_resnet", num_classes=5).eval()
    randomize_bn(model, seed=0)
    kill_random_channels(model, (3, 32, 32), 0.5, 0.3, seed=1)
    res = surgery(model, (3, 32, 32))
    assert res.report["params_after"] < res.report["params_before"]
    save_checkpoint(tmp_path / "slim.pt", res.model, meta={"input_shape": [3, 32, 32]})
    back = load_checkpoint(tmp_path / "slim.pt").model.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref, out = model(x), back(x)
    assert torch.allclose(ref, out, atol=1e-5 * float(ref.abs().max()))


def test_cli_train_timm_with_weights(tmp_path):
    pytest.importorskip("timm")
    write_folder(tmp_path / "imgs", "RGB", sizes=((32, 32),), counts={"train": (6, 5, 7), "test": (2, 2, 2)})
    src = create_model("timm:test_resnet", num_classes=1000)
    torch.save(src.state_dict(), tmp_path / "in1k.pth")
    out = tmp_path / "t.pt"
    assert main(["-q", "train", "--arch", "timm:test_resnet", "--weights", str(tmp_path / "in1k.pth"), "--dataset",
                 f"imagefolder:{tmp_path / 'imgs'}", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                 "--out", str(out)]) == 0
    ck = torch.load(out, weights_only=True)
    assert ck["arch"] == {"name": "timm:test_resnet", "kwargs": {"num_classes": 3, "in_chans": 3}}
    assert torch.equal(ck["init_state_dict"]["conv1.0.weight"] if "conv1.0.weight" in ck["init_state_dict"]
                       else ck["init_state_dict"]["conv1.weight"],
                       src.state_dict()["conv1.0.weight"] if "conv1.0.weight" in ck["init_state_dict"]
                       else src.state_dict()["conv1.weight"])


@pytest.mark.parametrize("args,match", [
    (["--arch-kwargs", "{width: 3}"], "--arch-kwargs is not valid JSON"),
    (["--arch-kwargs", "[1, 2]"], "must be a JSON object"),
    (["--weights", "nowhere.safetensors"], "no such file"),
    (["--arch", "timm:no_such_net_v9"], "unknown timm model"),
    (["--channels", "2"], "--channels must be 1"),
    (["--resize", "zoom"], "--resize must be one of"),
])
def test_cli_option_errors_are_one_line(tmp_path, capsys, args, match):
    write_folder(tmp_path / "d", "L", counts={"train": (3, 3), "test": (1, 1)})
    rc = main(["-q", "train", "--dataset", f"imagefolder:{tmp_path / 'd'}", "--epochs", "1", "--device", "cpu",
               "--out", str(tmp_path / "x.pt"), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith("error: ") and "\n" not in err and match in err


def test_weights_with_other_input_channels_suggest_channels(tmp_path):
    from torch import nn

    from edgeprune.checkpoint import load_weights
    from edgeprune.errors import CheckpointError

    def net(c):
        return nn.Sequential(nn.Conv2d(c, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))

    path = tmp_path / "w.pt"
    torch.save(net(3).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_weights(net(1), path)
    assert "expects 3 input channels" in str(err.value) and "--channels 3" in str(err.value)


def test_trust_code_of_a_missing_file_is_refused(tmp_path):
    from edgeprune.errors import ModelError
    from edgeprune.models import trust_code

    with pytest.raises(ModelError) as err:
        trust_code(str(tmp_path / "nope.py"))
    assert "no such file" in str(err.value)


def test_timm_typo_suggests_the_closest_name():
    pytest.importorskip("timm")
    from edgeprune.errors import ModelError
    from edgeprune.models._external import timm_builder

    with pytest.raises(ModelError) as err:
        timm_builder("resnet10tt")
    assert "resnet10t" in str(err.value).split("similar:")[1].split(",")[0]
