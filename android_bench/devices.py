"""Which devices are there, and what are they: for ``edgeprune devices`` and ``python -m android_bench devices``.

Devices are found in two places: a running ``adb`` server (it already knows USB phones and ``adb connect``-ed ones;
its serials, including ``IP:PORT``, work as ``--serial``), and USB enumeration through adb-shell's usb extra when it is
installed. TCP phones that no adb server knows cannot be discovered; pass their ``IP:PORT`` directly.
"""

from __future__ import annotations

import logging
import os
import socket

from android_bench.device_info import collect_device_info
from android_bench.transport import AdbConnection

log = logging.getLogger(__name__)


def _adb_server_port() -> int:
    return int(os.environ.get("ANDROID_ADB_SERVER_PORT", "5037"))


def parse_devices_l(text: str) -> list[dict]:
    """``adb devices -l`` lines (``SERIAL STATE key:value …``) → dicts."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2 or line.startswith(("List of", "*")):
            continue
        entry = {"serial": parts[0], "state": parts[1], "source": "adb-server"}
        for tok in parts[2:]:
            key, sep, value = tok.partition(":")
            if sep:
                entry[key] = value
        out.append(entry)
    return out


def query_adb_server(port: int | None = None, timeout_s: float = 2.0) -> list[dict] | None:
    """Ask a local adb server for ``host:devices-l`` (its smart-socket protocol); None if no server runs."""
    port = port or _adb_server_port()
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    except OSError:
        return None
    with sock:
        request = b"host:devices-l"
        sock.sendall(b"%04x" % len(request) + request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data.startswith(b"OKAY") or len(data) < 8:
        log.debug("adb server on %d answered %r", port, data[:40])
        return None
    length = int(data[4:8], 16)
    return parse_devices_l(data[8:8 + length].decode("utf-8", "replace"))


def _usb_devices() -> list[dict]:
    try:
        from adb_shell.transport.usb_transport import UsbTransport
    except (ImportError, OSError):
        return []
    found = []
    try:
        for transport in UsbTransport.find_all_adb_devices():
            found.append({"serial": transport.serial_number, "state": "usb", "source": "usb"})
    except Exception as exc:  # libusb errors vary by platform; listing must not fail because of them
        log.debug("USB enumeration failed: %s", exc)
    return found


def list_devices(adb_server_port: int | None = None) -> list[dict]:
    """Devices known to a local adb server plus USB ADB devices; each ``{"serial", "state", "source", …}``."""
    devices = query_adb_server(adb_server_port) or []
    known = {d["serial"] for d in devices}
    devices += [d for d in _usb_devices() if d["serial"] not in known]
    return devices


def describe_device(serial: str | None, **connection_options) -> dict:
    """Connect to ``serial`` and return its device record (the same dict ``run_benchmark`` saves)."""
    with AdbConnection(serial, **connection_options) as conn:
        return collect_device_info(conn)
