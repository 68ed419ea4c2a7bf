"""Connection to one device over adb-shell: TCP (``HOST:PORT``) or USB, with exit codes, keys and reconnects.

adb-shell speaks the ADB protocol itself (no ``adb`` server needed) but has four habits this module works around:

* its TCP transport never sets TCP_NODELAY, so every header/payload pair waits for the peer's delayed ACK
  (~40 ms per message; a 5 MiB push takes minutes instead of a fraction of a second);
* on a closed socket its reads spin until ``read_timeout_s`` instead of failing, and its writes ignore partial sends;
* ``shell()`` returns merged stdout/stderr without an exit code, so commands end with a sentinel ``echo __RC=$?``;
* after any failure the device object still says ``available``: we close and reconnect on the next call.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
import select
import socket
import time
from typing import Callable

from android_bench.errors import (
    AndroidBenchError,
    BenchTimeoutError,
    DeviceCommandError,
    DeviceDisconnectedError,
    DeviceGoneError,
    DeviceNotFoundError,
    DeviceUnauthorizedError,
    NoSpaceError,
    UsbSupportMissingError,
)

log = logging.getLogger(__name__)

RC_SENTINEL = "__RC="
_RC_RE = re.compile(r"__RC=(\d+)\s*$")


def normalize_newlines(text: str) -> str:
    """PTY shells (Android ≤ 6, ``shell -t``) turn ``\\n`` into ``\\r\\n``; every reader sees plain ``\\n``."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def default_key_path() -> pathlib.Path:
    """``~/.android/adbkey``: the key the ``adb`` tool uses, so a phone that already trusts this computer trusts us."""
    return pathlib.Path.home() / ".android" / "adbkey"


def ensure_adb_key(path: pathlib.Path | None = None) -> pathlib.Path:
    """Create an adb key pair at ``path`` (mode 0600) unless it exists; return the path. The key is never logged."""
    from adb_shell.auth.keygen import keygen, write_public_keyfile

    path = pathlib.Path(path) if path is not None else default_key_path()
    pub = pathlib.Path(str(path) + ".pub")
    if path.exists():
        if not pub.exists():
            # A private key without its .pub (copied by hand): derive the public half, never replace a trusted key.
            write_public_keyfile(str(path), str(pub))
        return path
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Create the file 0600 before keygen writes into it, so the private key is never readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)
    keygen(str(path))
    os.chmod(path, 0o600)
    # A notice for people, not a diagnostic: front ends show records marked ``notice`` with their normal output
    # (the edgeprune CLI prints them on stdout, keeping stderr for the one-line error contract).
    log.info("created a new adb key at %s; the phone will ask 'Allow USB debugging?' for it: tap Allow", path,
             extra={"notice": True})
    return path


def _make_signer(key_path: pathlib.Path):
    from adb_shell.auth.sign_cryptography import CryptographySigner

    return CryptographySigner(str(key_path))


def _nodelay_transport_class():
    """Build the TCP transport subclass lazily so importing this module does not import adb_shell."""
    from adb_shell.transport.tcp_transport import TcpTransport
    from adb_shell.exceptions import TcpTimeoutException

    class NoDelayTcpTransport(TcpTransport):
        """adb-shell's TCP transport with TCP_NODELAY, EOF detection and complete writes."""

        def connect(self, transport_timeout_s):
            super().connect(transport_timeout_s)
            self._connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def bulk_read(self, numbytes, transport_timeout_s):
            data = super().bulk_read(numbytes, transport_timeout_s)
            if not data:
                raise ConnectionResetError(f"{self._host}:{self._port} closed the connection")
            return data

        def bulk_write(self, data, transport_timeout_s):
            view = memoryview(data)
            sent = 0
            while sent < len(view):
                _, writable, _ = select.select([], [self._connection], [], transport_timeout_s)
                if not writable:
                    raise TcpTimeoutException(f"sending to {self._host}:{self._port} timed out")
                try:
                    sent += self._connection.send(view[sent:])
                except BlockingIOError:
                    continue
            return sent

    return NoDelayTcpTransport


def _transport_errors() -> tuple[type[BaseException], ...]:
    """What a broken link or a confused device raises through adb-shell (not programming errors, which propagate)."""
    import struct

    from adb_shell import exceptions as adbx

    errors: list[type[BaseException]] = [OSError, struct.error]
    errors += [obj for obj in vars(adbx).values() if isinstance(obj, type) and issubclass(obj, Exception)]
    try:
        import usb1

        errors.append(usb1.USBError)
    except ImportError:
        pass
    return tuple(errors)


def parse_serial(serial: str | None) -> tuple[str, str | None, int | None]:
    """Where a serial points: ("tcp", host, port) for a network device, ("usb", serial, None) otherwise.

    Network forms: ``HOST:PORT``, ``[v6]:PORT`` (as ``adb devices`` prints IPv6 devices), ``emulator-N``
    (the emulator's adbd listens on 127.0.0.1:N+1, the console on N) and mDNS service names
    ``adb-SERIAL._adb-tls-connect._tcp`` / ``._adb._tcp`` (resolved by an adb server, which adb-shell does not
    have: refused with a hint). Everything else is a USB serial.
    """
    if not serial:
        return "usb", serial, None
    m = re.fullmatch(r"\[([0-9A-Fa-f:.%\w]+)\]:(\d+)", serial)
    if m:
        return "tcp", m.group(1), int(m.group(2))
    m = re.fullmatch(r"emulator-(\d+)", serial)
    if m:
        return "tcp", "127.0.0.1", int(m.group(1)) + 1
    if "._adb" in serial and serial.rstrip(".").endswith("._tcp"):
        return "mdns", serial, None
    m = re.fullmatch(r"([\w.\-]+):(\d+)", serial)
    if m:
        return "tcp", m.group(1), int(m.group(2))
    return "usb", serial, None


class AdbConnection:
    """One device: connect lazily, run shell commands with exit codes, push/pull files, reconnect after failures.

    State (the adb-shell device object and whether it is trusted to be connected) is why this is a class.
    """

    def __init__(
        self,
        serial: str | None,
        *,
        key_path: pathlib.Path | None = None,
        transport_timeout_s: float = 10.0,
        auth_timeout_s: float = 30.0,
        read_timeout_s: float = 10.0,
        reconnect_wait_s: float = 10.0,
    ):
        self.serial = serial
        self.kind, self._host, self._port = parse_serial(serial)
        self.key_path = pathlib.Path(key_path) if key_path is not None else None
        self.transport_timeout_s = transport_timeout_s
        self.auth_timeout_s = auth_timeout_s
        self.read_timeout_s = read_timeout_s
        self.reconnect_wait_s = reconnect_wait_s
        self.last_failure: BaseException | None = None
        self.gone = False
        self._device = None
        self._connected = False
        self._ever_connected = False
        self.reconnects = 0

    # -- connection ---------------------------------------------------------------------------------------------
    def _new_device(self):
        if self.kind == "mdns":
            raise DeviceNotFoundError(
                f"{self.serial} is an mDNS service name (wireless debugging) that only an adb server resolves: run "
                f"`adb devices -l` or `adb mdns services` to see its IP:PORT and pass that as --serial"
            )
        if self.kind == "tcp":
            from adb_shell.adb_device import AdbDevice

            transport = _nodelay_transport_class()(self._host, self._port)
            return AdbDevice(transport, default_transport_timeout_s=self.transport_timeout_s)
        try:
            from adb_shell.adb_device import AdbDeviceUsb
            from adb_shell.transport import usb_transport  # noqa: F401  (fails without libusb1)
        except (ImportError, OSError) as exc:
            raise UsbSupportMissingError(
                "USB needs adb-shell's usb extra: pip install 'adb-shell[usb]' (or use --serial PHONE_IP:5555 after "
                "`adb tcpip 5555`)"
            ) from exc
        try:
            return AdbDeviceUsb(serial=self.serial, default_transport_timeout_s=self.transport_timeout_s)
        except Exception as exc:  # adb-shell raises several types here
            raise DeviceNotFoundError(
                f"no USB device{' ' + self.serial if self.serial else ''} found: plug the phone in, enable USB "
                f"debugging, and stop any adb server holding it (`adb kill-server`) ({exc})"
            ) from exc

    def connect(self) -> None:
        """(Re)connect: close whatever was open, then authenticate with the user's adb key."""
        from adb_shell import exceptions as adbx

        self.close()
        device = self._new_device()  # first: a missing USB extra must not leave a new key behind
        key = ensure_adb_key(self.key_path)
        signer = _make_signer(key)
        prompted = {"shown": False}

        def _on_prompt(_dev):
            prompted["shown"] = True
            log.warning("accept the 'Allow USB debugging' prompt on the device %s", self.serial or "")

        where = self.serial or "USB"
        try:
            device.connect(
                rsa_keys=[signer],
                transport_timeout_s=self.transport_timeout_s,
                auth_timeout_s=self.auth_timeout_s,
                read_timeout_s=self.read_timeout_s,
                auth_callback=_on_prompt,
            )
        except (ConnectionRefusedError, socket.gaierror, OSError) as exc:
            device.close()
            if prompted["shown"]:
                raise DeviceUnauthorizedError(
                    f"{where} did not accept this computer's key: unlock the phone and tap 'Allow' on the "
                    f"'Allow USB debugging' prompt, then retry"
                ) from exc
            raise DeviceNotFoundError(
                f"no device answers at {where}: check the IP:PORT, that the phone is on, and `adb tcpip 5555` was run"
                f" ({exc.__class__.__name__}: {exc})"
            ) from exc
        except (adbx.TcpTimeoutException, adbx.AdbTimeoutError, adbx.DeviceAuthError) as exc:
            device.close()
            if prompted["shown"]:
                raise DeviceUnauthorizedError(
                    f"{where} did not accept this computer's key within {self.auth_timeout_s:.0f} s: unlock the phone "
                    f"and tap 'Allow' on the 'Allow USB debugging' prompt, then retry"
                ) from exc
            raise DeviceNotFoundError(
                f"{where} accepted the connection but did not answer the ADB handshake: is it an adb port? ({exc})"
            ) from exc
        except Exception as exc:
            device.close()
            hint = " (if an adb server holds the phone, run `adb kill-server`)" if self.kind == "usb" else ""
            raise DeviceNotFoundError(f"could not connect to {where}: {exc.__class__.__name__}: {exc}{hint}") from exc
        self._device = device
        self._connected = True
        self._ever_connected = True
        log.debug("connected to %s", where)

    def close(self) -> None:
        if self._device is not None:
            try:
                self._device.close()
            except Exception:  # closing a broken socket may fail again; nothing to recover
                pass
        self._device = None
        self._connected = False

    def _ensure(self):
        if not self._connected:
            if self._ever_connected:
                self.reconnects += 1
            self.connect()
        return self._device

    def _reconnect_after_loss(self, what: str, exc: BaseException) -> None:
        """Reconnect after a broken link, waiting up to ``reconnect_wait_s`` for a device that is coming back (Wi-Fi
        roaming, a restarted adbd); if it does not come back, say the device is gone."""
        deadline = time.monotonic() + (0 if self.gone else self.reconnect_wait_s)
        while True:
            try:
                self._ensure()
                self.gone = False
                return
            except DeviceNotFoundError as again:
                if time.monotonic() >= deadline:
                    self.gone = True  # later calls (clean-up) fail at once instead of waiting again
                    raise DeviceGoneError(
                        f"the device {self.serial or '(USB)'} is gone: the connection broke while {what} and it did "
                        f"not come back within {self.reconnect_wait_s:.0f} s: check the cable / Wi-Fi / that adbd runs "
                        f"and retry ({exc.__class__.__name__}: {exc})"
                    ) from again
                time.sleep(0.5)

    def _call(self, what: str, fn: Callable, retry: bool):
        """Run ``fn(device)``; on a transport failure (a reset or a timeout, which is how a Wi-Fi drop shows) close,
        reconnect and (if ``retry``) try once more."""
        from adb_shell import exceptions as adbx

        attempts = 2 if retry else 1
        last: BaseException | None = self.last_failure
        for attempt in range(attempts):
            if not self._connected and self._ever_connected:
                self._reconnect_after_loss(what, last or ConnectionError("not connected"))
            device = self._ensure()
            try:
                return fn(device)
            except AndroidBenchError:
                raise
            except _transport_errors() as exc:
                # Whatever happened, adb-shell's state may be stale (its `available` flag lies): start afresh.
                self.close()
                if isinstance(exc, (adbx.PushFailedError, adbx.AdbCommandFailureException)):
                    # The sync service answered with FAIL: the link works, the device refused.
                    msg = exc.args[0] if exc.args else exc
                    if isinstance(msg, (bytes, bytearray)):
                        msg = msg.decode("utf-8", "replace")
                    msg = " ".join(str(msg).split())
                    if "space" in msg.lower():
                        raise NoSpaceError(
                            f"the device is out of space while {what} ({msg}): free space in /data (delete files in "
                            f"/data/local/tmp) and retry"
                        ) from exc
                    raise DeviceCommandError(f"{what} failed on the device: {msg}") from exc
                log.warning("%s failed (%s: %s); reconnecting", what, exc.__class__.__name__, exc)
                last = self.last_failure = exc
                if attempt == attempts - 1:
                    detail = " ".join(f"{exc.__class__.__name__}: {exc}".split())
                    if isinstance(exc, (adbx.AdbTimeoutError, adbx.TcpTimeoutException, TimeoutError)):
                        raise BenchTimeoutError(
                            f"{what} timed out on {self.serial or 'USB'} (no answer; a Wi-Fi drop looks like this): "
                            f"check the connection and retry ({detail})") from exc
                    raise DeviceDisconnectedError(
                        f"lost the connection to {self.serial or 'the USB device'} while {what}: check the cable / "
                        f"Wi-Fi and retry ({detail})"
                    ) from exc

    # -- commands -----------------------------------------------------------------------------------------------
    def shell_raw(self, command: str, *, timeout_s: float | None = None, retry: bool = True,
                  what: str | None = None) -> str:
        """Run ``command`` and return merged stdout/stderr (no exit code). Retry once after reconnecting.
        ``what`` names the command in error messages (default: its first 60 characters)."""
        read_timeout = max(self.read_timeout_s, timeout_s or 0)
        out = self._call(
            what or f"running `{command[:60]}`",
            lambda d: d.shell(command, read_timeout_s=read_timeout, timeout_s=timeout_s),
            retry,
        )
        return normalize_newlines(out)

    def run(self, command: str, *, timeout_s: float | None = None, retry: bool = True,
            what: str | None = None) -> tuple[str, int]:
        """Run ``command``; return (output, exit code) using the ``__RC=`` sentinel adb-shell needs."""
        # A subshell keeps `exit N` inside the command from skipping the sentinel.
        out = self.shell_raw(f"({command}\n); echo {RC_SENTINEL}$?", timeout_s=timeout_s, retry=retry,
                             what=what or f"running `{command[:60]}`")
        text = out.rstrip("\n")
        head, sep, tail = text.rpartition("\n")
        last = tail if sep else text
        m = _RC_RE.search(last)
        if not m:
            raise DeviceDisconnectedError(f"output of `{command[:60]}` ended early (no exit code): retry")
        body = head + "\n" if sep else ""
        # The sentinel may share a line with output that had no trailing newline.
        body += last[: m.start()]
        return body, int(m.group(1))

    def push(self, local: pathlib.Path, remote: str, *, progress: Callable[[int, int], None] | None = None,
             retry: bool = True) -> None:
        """Push ``local`` to ``remote`` over the sync service."""
        total = os.path.getsize(local)
        done = {"n": 0}

        def _cb(_path, nbytes, _total):
            done["n"] += nbytes
            if progress:
                progress(done["n"], total)

        def _push(d):
            done["n"] = 0
            d.push(str(local), remote, st_mode=0o100755, progress_callback=_cb,
                   read_timeout_s=max(self.read_timeout_s, 30.0))

        self._call(f"pushing {pathlib.Path(local).name}", _push, retry)

    def pull(self, remote: str, local: pathlib.Path, *, retry: bool = True) -> None:
        """Pull ``remote`` into ``local`` (written to a temp file, then renamed)."""
        local = pathlib.Path(local)
        tmp = local.with_name(local.name + ".part")

        def _pull(d):
            d.pull(remote, str(tmp), read_timeout_s=max(self.read_timeout_s, 30.0))

        try:
            self._call(f"pulling {remote}", _pull, retry)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, local)

    def __enter__(self) -> "AdbConnection":
        self._ensure()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
