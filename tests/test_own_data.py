"""Image folders as they are (PNG files the tests write: two sizes, gray and colour, odd class counts), the same
options on built-in datasets, and the one-line error when model and data disagree."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from _synthetic import make_mnist_like
from edgeprune.cli import main
from edgeprune.compat import check_model_data
from edgeprune.data import load_dataset
from edgeprune.data.options import ImageOptions, channel_stats
from edgeprune.errors import DatasetError
from edgeprune.models import create_model

COUNTS = {"train": (7, 4, 9), "test": (3, 2, 4)}  # three classes of uneven size


def write_folder(root, mode: str = "L", sizes=((28, 28),), counts=COUNTS, seed: int = 0):
    """PNG images, one sub-folder per class; class k is brighter (k·70 + noise). Returns {split: [(array, k)]}."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, per_class in counts.items():
        written[split] = []
        for k, n in enumerate(per_class):
            d = root / split / f"class_{k}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = sizes[i % len(sizes)]
                shape = (h, w) if mode == "L" else (h, w, 3)
                a = (rng.integers(0, 60, shape) + 70 * k).astype(np.uint8)
                Image.fromarray(a, mode).save(d / f"img{i:03d}.png")
                written[split].append((a, k))
    return written


def test_grayscale_folder_detected_and_normalized_on_train_split(tmp_path):
    written = write_folder(tmp_path, "L")
    b = load_dataset(f"imagefolder:{tmp_path}", seed=3)
    assert b.input_shape == (1, 28, 28) and b.num_classes == 3 and b.classes == ["class_0", "class_1", "class_2"]
    assert (len(b.train) + len(b.val), len(b.test)) == (20, 9)
    assert "1 channel detected" in b.detected and "28×28 detected" in b.detected and "training split" in b.detected
    # The statistics are those of the training part only (validation held out), recomputed here independently.
    raw = [torch.from_numpy(a)[None] for a, _ in written["train"]]
    mean, std = b.options["mean"][0], b.options["std"][0]
    train_pixels = (b.train.x * std + mean)  # back to [0, 1]
    assert float(train_pixels.mean()) == pytest.approx(mean, abs=1e-5)
    all_mean = float(torch.stack(raw).float().div(255).mean())
    assert mean != pytest.approx(all_mean, abs=1e-7)  # validation images are not in it
    # Test images come from test/, labels by class folder, pixels unchanged.
    first, label = written["test"][0]
    assert int(b.test.y[0]) == label
    assert torch.allclose(b.test.x[0, 0] * std + mean, torch.from_numpy(first).float() / 255, atol=1e-6)
    assert sorted(b.test.y.tolist()) == [0] * 3 + [1] * 2 + [2] * 4


def test_colour_two_sizes_most_common_kept_and_policies(tmp_path):
    write_folder(tmp_path, "RGB", sizes=((16, 16), (16, 16), (20, 24)))
    b = load_dataset(f"imagefolder:{tmp_path}")
    assert b.input_shape == (3, 16, 16) and b.options["channels"] == 3
    assert "2 sizes" in b.detected and "most common, 16×16" in b.detected
    for policy in ("crop", "stretch", "pad"):
        s = load_dataset(f"imagefolder:{tmp_path}", options={"image_size": "12x20", "resize": policy})
        assert s.input_shape == (3, 12, 20) and s.options["resize"] == policy
    gray = load_dataset(f"imagefolder:{tmp_path}", options={"channels": 1, "mean": [0.5], "std": [0.25]})
    assert gray.input_shape == (1, 16, 16) and gray.options["mean"] == [0.5]
    # Worker processes decode exactly what the main process decodes.
    pooled = load_dataset(f"imagefolder:{tmp_path}", workers=2)
    assert torch.equal(pooled.train.x, b.train.x) and torch.equal(pooled.test.y, b.test.y)


def test_pad_policy_centers_the_image(tmp_path):
    write_folder(tmp_path, "L", counts={"train": (2, 2), "test": (1, 1)})
    b = load_dataset(f"imagefolder:{tmp_path}", options={"image_size": 32, "resize": "pad", "mean": [0], "std": [1]})
    x = b.test.x[0, 0]
    assert torch.all(x[:2] == 0) and torch.all(x[:, -2:] == 0) and float(x[2:30, 2:30].min()) >= 0
    src = np.asarray(Image.open(tmp_path / "test" / "class_0" / "img000.png"), dtype=np.float32) / 255
    assert torch.allclose(x[2:30, 2:30], torch.from_numpy(src), atol=1e-6)


def test_recorded_options_reproduce_the_tensors(tmp_path):
    write_folder(tmp_path, "RGB", sizes=((16, 16), (18, 18)))
    a = load_dataset(f"imagefolder:{tmp_path}")
    again = load_dataset(f"imagefolder:{tmp_path}", options=a.options)
    assert torch.equal(a.train.x, again.train.x) and a.options == again.options


@pytest.mark.parametrize("case,match", [
    ("flat", "no class sub-folders"),
    ("empty_class", "has no images"),
    ("corrupt", "cannot read"),
    ("test_extra_class", "training folder lacks"),
    ("one_class", "at least 2"),
])
def test_folder_errors_are_one_line(tmp_path, case, match):
    if case == "flat":
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    else:
        write_folder(tmp_path, "L", counts={"train": (2, 2), "test": (1, 1)})
        if case == "empty_class":
            (tmp_path / "train" / "class_9").mkdir()
        elif case == "corrupt":
            (tmp_path / "train" / "class_0" / "broken.png").write_bytes(b"\x89PNG not really")
        elif case == "test_extra_class":
            (tmp_path / "test" / "zebra").mkdir()
            Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "test" / "zebra" / "z.png")
        elif case == "one_class":
            import shutil

            shutil.rmtree(tmp_path / "train" / "class_1")
            shutil.rmtree(tmp_path / "test" / "class_1")
    with pytest.raises(DatasetError, match=match) as err:
        load_dataset(f"imagefolder:{tmp_path}")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kw,match", [
    ({"channels": 2}, "--channels"), ({"resize": "zoom"}, "--resize"), ({"mean": "0.5"}, "together"),
    ({"image_size": "0"}, "positive"), ({"image_size": "axb"}, "N or HxW"), ({"mean": "x", "std": "1"}, "--mean"),
])
def test_option_errors(kw, match):
    with pytest.raises(DatasetError, match=match):
        ImageOptions(**kw)


def test_builtin_padded_to_32_with_3_channels_runs_a_cifar_network(tmp_path):
    make_mnist_like(tmp_path / "mnist", n_train=60, n_test=20)
    native = load_dataset("mnist", data_dir=tmp_path / "mnist")
    b = load_dataset("mnist", data_dir=tmp_path / "mnist", options={"image_size": 32, "channels": 3, "resize": "pad"})
    assert b.input_shape == (3, 32, 32) and b.train.x.shape[1:] == (3, 32, 32)
    assert torch.equal(b.train.x[:, 0, 2:30, 2:30], native.train.x[:, 0])  # same statistics, centered
    assert torch.equal(b.train.x[:, 0], b.train.x[:, 2])
    border = (0 - 0.1307) / 0.3081
    assert torch.allclose(b.train.x[:, :, :2], torch.full_like(b.train.x[:, :, :2], border))
    check_model_data(create_model("resnet20-cifar", num_classes=10), b)  # the paper's CIFAR net takes it
    with pytest.raises(DatasetError, match=r"expects input 3×32×32, the data gives 1×28×28.*--channels 3"):
        check_model_data(create_model("resnet20-cifar", num_classes=10), native, {"name": "resnet20-cifar"})


def test_mismatch_is_one_line_naming_the_fix(tmp_path):
    write_folder(tmp_path, "L")
    big = load_dataset(f"imagefolder:{tmp_path}", options={"image_size": 40})
    model = create_model("lenet5", num_classes=3)
    with pytest.raises(DatasetError) as err:
        check_model_data(model, big, model.edgeprune_arch)
    msg = str(err.value)
    assert "expects input 1×28×28" in msg and "1×40×40" in msg and "--image-size 28" in msg and "\n" not in msg
    ok = load_dataset(f"imagefolder:{tmp_path}")
    with pytest.raises(DatasetError, match=r"10 outputs but .* 3 classes.*num_classes"):
        check_model_data(create_model("lenet5"), ok)
    check_model_data(model, ok)
    assert model.training  # the check leaves the model as it was


def test_cli_train_lenet5_on_gray_folder_and_mismatch(tmp_path, capsys):
    write_folder(tmp_path / "digits", "L")
    out = tmp_path / "base.pt"
    rc = main(["-q", "train", "--arch", "lenet5", "--dataset", f"imagefolder:{tmp_path / 'digits'}", "--epochs", "1",
               "--batch-size", "8", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    ck = torch.load(out, weights_only=True)
    assert ck["meta"]["input_shape"] == [1, 28, 28] and ck["meta"]["data_options"]["channels"] == 1
    assert ck["arch"]["kwargs"]["num_classes"] == 3
    capsys.readouterr()
    rc = main(["-q", "train", "--arch", "lenet5", "--dataset", f"imagefolder:{tmp_path / 'digits'}",
               "--image-size", "32", "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.count("\n") == 0 and err.startswith("error: model lenet5 does not fit")
    assert "expects input 1×28×28" in err and "1×32×32" in err and "--image-size 28" in err
    assert not (tmp_path / "x.pt").exists()


def test_export_int8_reads_the_checkpoint_dataset_with_its_recorded_options(tmp_path):
    """32×32 gray images trained at --image-size 28: the INT8 calibration and gate read the folder as trained."""
    write_folder(tmp_path / "digits", "L", sizes=((32, 32),), counts={"train": (20, 15, 25), "test": (5, 4, 6)})
    base = tmp_path / "base.pt"
    assert main(["-q", "train", "--arch", "lenet5", "--dataset", f"imagefolder:{tmp_path / 'digits'}",
                 "--image-size", "28", "--epochs", "1", "--batch-size", "16", "--device", "cpu",
                 "--out", str(base)]) == 0
    out = tmp_path / "export"
    assert main(["-q", "export", str(base), "--format", "onnx", "--out", str(out), "--quantize", "int8",
                 "--calibration-samples", "32", "--keep-int8"]) == 0
    record = json.loads((out / "base.int8.json").read_text())
    assert record["test_samples"] == 15 and (out / "base.int8.onnx").exists()


@pytest.mark.parametrize("channels,values,expected", [(1, 2, "give 1 value each"), (3, 2, "give 1 or 3 values each")])
def test_mean_std_count_wording(channels, values, expected):
    from edgeprune.data.options import ImageOptions
    from edgeprune.errors import DatasetError

    opts = ImageOptions(mean=(0.5,) * values, std=(0.5,) * values)
    with pytest.raises(DatasetError) as err:
        opts.stats_for(channels)
    assert expected in str(err.value)


def test_dataset_not_found_line_reads_cleanly(tmp_path):
    from edgeprune.errors import DatasetError

    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", data_dir=tmp_path / "nothere")
    msg = str(err.value)
    assert "  " not in msg and "and their" not in msg and str(tmp_path / "nothere") in msg


def test_refused_compress_leaves_no_out_folder(tmp_path, capsys):
    write_folder(tmp_path / "digits", "L")
    ck = tmp_path / "base.pt"
    assert main(["-q", "train", "--arch", "lenet5", "--dataset", f"imagefolder:{tmp_path / 'digits'}", "--epochs", "1",
                 "--batch-size", "8", "--device", "cpu", "--out", str(ck)]) == 0
    write_folder(tmp_path / "rgb", "L", counts={"train": (6, 6), "test": (3, 3)})  # 2 classes, the model has 3
    capsys.readouterr()
    out = tmp_path / "run"
    rc = main(["-q", "compress", str(ck), "--dataset", f"imagefolder:{tmp_path / 'rgb'}", "--max-epochs", "1",
               "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "error:" in err
    assert not out.exists()
    kept = tmp_path / "existing"
    kept.mkdir()
    assert main(["-q", "compress", str(ck), "--dataset", f"imagefolder:{tmp_path / 'rgb'}", "--max-epochs", "1",
                 "--device", "cpu", "--out", str(kept)]) == 1
    assert kept.is_dir()  # a folder that existed before is never removed


@pytest.mark.parametrize("case", ["other shape", "not on this machine"])
def test_export_int8_checks_its_dataset_before_writing_anything(tmp_path, case):
    write_folder(tmp_path / "digits", "L", sizes=((28, 28),), counts={"train": (20, 15, 25), "test": (5, 4, 6)})
    write_folder(tmp_path / "colour", "RGB", sizes=((28, 28),), counts={"train": (6, 6, 6), "test": (2, 2, 2)})
    base = tmp_path / "base.pt"
    assert main(["-q", "train", "--arch", "lenet5", "--dataset", f"imagefolder:{tmp_path / 'digits'}", "--epochs", "1",
                 "--batch-size", "16", "--device", "cpu", "--out", str(base)]) == 0
    other = f"imagefolder:{tmp_path / 'colour'}" if case == "other shape" else "cifar10"
    out = tmp_path / "export"
    assert main(["-q", "export", str(base), "--format", "onnx", "--out", str(out), "--quantize", "int8",
                 "--dataset", other]) == 1
    assert not out.exists() or not any(out.iterdir())
