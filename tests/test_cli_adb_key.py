"""The adb key a first phone benchmark creates: where its notice goes, and the one-line error contract beside it.

Every test runs with a HOME of its own that has no ``~/.android`` yet, as on a machine that never used adb.
"""

from __future__ import annotations

import socket
import stat

import pytest
import torch

from edgeprune.cli import main
from edgeprune.models import create_model


@pytest.fixture
def fresh_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "model.onnx"
    torch.onnx.export(create_model("tiny-cnn").eval(), (torch.randn(1, 1, 8, 8),), str(path), dynamo=False,
                      external_data=False)
    return path


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released): connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bench(model, serial=None):
    argv = ["bench", str(model), "--device", "adb", "--runs", "5", "--runner", "python-ort",
            "--cooldown-seconds", "0"]
    return main(argv + (["--serial", serial] if serial else []))


def test_first_connection_creates_the_key_with_a_notice_on_stdout(fresh_home, onnx_model, capsys):
    rc = _bench(onnx_model, f"127.0.0.1:{_closed_port()}")
    out, err = capsys.readouterr()
    key = fresh_home / ".android" / "adbkey"
    assert rc == 1
    # stderr: exactly the one error line, even though a key was created on the way.
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    # stdout: the user learns that the phone will ask for this new key.
    assert f"note: created a new adb key at {key}" in out and "Allow USB debugging?" in out
    assert key.is_file() and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (fresh_home / ".android" / "adbkey.pub").is_file()


def test_existing_key_is_reused_silently(fresh_home, onnx_model, capsys):
    _bench(onnx_model, f"127.0.0.1:{_closed_port()}")
    key = fresh_home / ".android" / "adbkey"
    first = key.read_bytes()
    capsys.readouterr()
    rc = _bench(onnx_model, f"127.0.0.1:{_closed_port()}")
    out, err = capsys.readouterr()
    assert rc == 1 and "adb key" not in out and len(err.strip().splitlines()) == 1
    assert key.read_bytes() == first  # a key the phone may already trust is never replaced


def test_usb_without_the_extra_fails_before_creating_a_key(fresh_home, onnx_model, capsys):
    import importlib.util

    if importlib.util.find_spec("usb1") is not None:
        pytest.skip("adb-shell's usb extra is installed here; this checks the machine without it")
    rc = _bench(onnx_model)
    out, err = capsys.readouterr()
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "--serial" in err
    assert "adb key" not in out and not (fresh_home / ".android").exists()
