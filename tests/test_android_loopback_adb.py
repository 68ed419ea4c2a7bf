"""The loopback ADB device against Debian's real ``adb`` client and against adb-shell (through our transport)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest

from adb_loopback.fixtures import adb_home, device, make_device, private_home  # noqa: F401
from adb_loopback import protocol as P

ADB = shutil.which("adb")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(ADB is None, reason="Debian's adb client is not installed")
def test_real_adb_client_push_shell_pull(device, tmp_path):
    """A private adb server (own port, fresh HOME → fresh key) connects, pushes, runs a shell command, pulls."""
    home = tmp_path / "adb-client-home"
    home.mkdir()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANDROID", "ADB"))}
    env.update(HOME=str(home), ANDROID_ADB_SERVER_PORT=str(port))

    def adb(*args, timeout=20):
        return subprocess.run([ADB, "-P", str(port), *args], env=env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    payload = os.urandom(700_000)  # several sync DATA chunks and several ADB packets
    src = tmp_path / "payload.bin"
    src.write_bytes(payload)
    back = tmp_path / "back.bin"
    try:
        assert adb("start-server").returncode == 0
        adb("connect", device.serial)
        assert adb("-s", device.serial, "wait-for-device", timeout=20).returncode == 0
        listed = adb("devices", "-l").stdout
        assert f"{device.serial}" in listed and "device product:EML-L29" in listed

        shell = adb("-s", device.serial, "shell", "echo", "hello", "from", "loopback")
        assert shell.returncode == 0 and shell.stdout == "hello from loopback\n"

        push = adb("-s", device.serial, "push", str(src), "/data/local/tmp/payload.bin")
        assert push.returncode == 0, push.stderr
        assert (device.sandbox.root / "data/local/tmp/payload.bin").read_bytes() == payload

        pull = adb("-s", device.serial, "pull", "/data/local/tmp/payload.bin", str(back))
        assert pull.returncode == 0, pull.stderr
        assert back.read_bytes() == payload

        # The device learnt adb's key from RSAPUBLICKEY; adb's signature of the earlier token verifies against it.
        assert ("auth", "publickey", True) in device.events_of("auth")

        from android_bench.devices import list_devices

        found = {d["serial"]: d for d in list_devices(adb_server_port=port)}
        assert found[device.serial]["state"] == "device" and found[device.serial]["model"] == "EML_L29"
    finally:
        adb("kill-server", timeout=10)


def test_adb_shell_auth_by_signature_after_key_is_known(device):
    """First connection: unknown key → public key accepted; second: the signature alone verifies (like a phone)."""
    from android_bench.transport import AdbConnection

    with AdbConnection(device.serial) as conn:
        assert conn.run("echo ok") == ("ok\n", 0)
    with AdbConnection(device.serial) as conn:
        assert conn.run("exit 7") == ("", 7)
    assert device.events_of("auth") == [("auth", "publickey", True), ("auth", "signature")]


def test_key_format_roundtrip(private_home):
    """adb-shell's keygen output decodes with our reader of adb's key struct and its signatures verify."""
    from adb_shell.auth.sign_cryptography import CryptographySigner

    key = private_home / ".android" / "adbkey"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    signer = CryptographySigner(str(key))
    pub = P.decode_adb_public_key(signer.GetPublicKey())
    token = os.urandom(20)
    assert P.verify_token_signature(pub, token, signer.Sign(token))
    assert not P.verify_token_signature(pub, os.urandom(20), signer.Sign(token))


def test_push_pull_and_exit_codes_through_harness_transport(device, tmp_path):
    from android_bench.transport import AdbConnection

    data = os.urandom(3 * 1024 * 1024 + 17)
    src = tmp_path / "blob"
    src.write_bytes(data)
    with AdbConnection(device.serial) as conn:
        conn.push(src, "/data/local/tmp/deep/dir/blob")
        assert (device.sandbox.root / "data/local/tmp/deep/dir/blob").read_bytes() == data
        conn.pull("/data/local/tmp/deep/dir/blob", tmp_path / "back")
        out, rc = conn.run("sha256sum /data/local/tmp/deep/dir/blob")
    assert (tmp_path / "back").read_bytes() == data
    import hashlib

    assert rc == 0 and out.split()[0] == hashlib.sha256(data).hexdigest()


def test_transport_sets_nodelay_and_stays_fast(device, tmp_path):
    """TCP_NODELAY is what makes small ADB messages fast; a 5 MiB push stays far below stock adb-shell's time."""
    import time

    from android_bench.transport import AdbConnection

    big = tmp_path / "big"
    big.write_bytes(os.urandom(5 * 1024 * 1024))
    with AdbConnection(device.serial) as conn:
        sock = conn._device._io_manager._transport._connection
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            conn.run("echo x")
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        conn.push(big, "/data/local/tmp/big")
        push_s = time.perf_counter() - t0
    assert min(times) < 0.020  # stock adb-shell needs ≥ 40 ms (one delayed ACK) for every round trip
    assert push_s < 3.0  # goal ≤ 1 s; generous for a busy CI machine


def test_closed_connection_fails_fast_and_reconnects(make_device):
    """A dropped link is noticed at once (not after adb-shell's 10 s read timeout); the next command reconnects."""
    import time

    from adb_loopback import Faults
    from android_bench.errors import DeviceDisconnectedError
    from android_bench.transport import AdbConnection

    dev = make_device(faults=Faults(drop_match=b"sleep 0.2", drop_after_messages=0))
    with AdbConnection(dev.serial) as conn:
        t0 = time.perf_counter()
        with pytest.raises(DeviceDisconnectedError, match="lost the connection"):
            conn.run("sleep 0.2; echo done", retry=False)
        assert time.perf_counter() - t0 < 3.0
        assert conn.run("echo back") == ("back\n", 0)
        assert conn.reconnects == 1
    assert dev.events_of("drop")


def test_refused_sync_request_is_a_device_error_not_a_disconnect(device, tmp_path):
    from android_bench.errors import DeviceCommandError
    from android_bench.transport import AdbConnection

    with AdbConnection(device.serial) as conn:
        with pytest.raises(DeviceCommandError, match="No such file"):
            conn.pull("/data/local/tmp/missing.bin", tmp_path / "x")
        assert not (tmp_path / "x").exists() and not (tmp_path / "x.part").exists()
        assert conn.run("echo still here") == ("still here\n", 0)
        assert conn.reconnects == 1  # the failed sync stream was dropped with the connection, then reopened
