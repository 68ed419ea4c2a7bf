"""A loopback ADB device: the real ADB wire protocol over TCP on 127.0.0.1, backed by a sandbox folder.

Implements what a phone's adbd answers to the harness and to Debian's ``adb`` client:

* ``CNXN`` (version ``min(client, 0x01000001)``, maxdata ``min(client, 256 KiB)``), banner
  ``device::ro.product.name=…;ro.product.model=…;ro.product.device=…;features=fixed_push_mkdir`` — no shell_v2,
  stat_v2 or TLS, because they are not implemented;
* ``AUTH``: a random 20-byte token; a signature is accepted if it verifies (PKCS#1 v1.5, SHA-1 DigestInfo) against an
  authorized key; an ``RSAPUBLICKEY`` is accepted as if the user tapped "Allow" (and the key becomes authorized), unless
  the ``refuse_auth`` fault is on, in which case the device stays silent like a phone whose prompt nobody answers;
* ``OPEN``/``OKAY``/``WRTE``/``CLSE`` streams with one-WRTE-in-flight flow control;
* ``shell:CMD`` (v1: raw merged output, no exit status) run by ``/bin/sh -c`` in the sandbox — on pipes, or with
  ``pty=True`` on a cooked PTY like Android <= 6 daemons: CRLF output, and the session hung up when the shell exits;
* ``sync:`` with STAT (v1), LIST, SEND, RECV, DATA, DONE, OKAY, FAIL, QUIT.

Faults (``Faults``): refuse auth, drop the TCP connection N messages after a matching OPEN, a disk quota that makes
pushes fail with "No space left on device", and a 32-bit ABI (set on the ``Sandbox``).

Out of space: by default the FAIL comes after the client's DONE; with ``Faults(fail_early=True)`` it comes at once
and the rest of the data is discarded until DONE, as adbd does (tests/test_real_adbd.py checks the real daemon).
``Faults(silence=True)`` turns a drop into a dead link: the connection stays open and nothing is answered.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pathlib
import select
import signal
import socket
import stat as stat_mod
import struct
import subprocess
import threading
import time

from . import protocol as P
from .sandbox import Sandbox

log = logging.getLogger(__name__)

MAXDATA = 256 * 1024
WAIT_S = 30.0  # bound on every wait inside the device, so a broken client never hangs a test


@dataclasses.dataclass
class Faults:
    """Switchable misbehaviour. ``drop_*``: after a received OPEN whose destination contains ``drop_match`` (or after
    any message when it is None), count ``drop_after_messages`` more received messages, then cut the TCP connection;
    this happens at most ``drop_times`` times."""

    refuse_auth: bool = False
    drop_match: bytes | None = None
    drop_after_messages: int | None = None
    drop_times: int = 1
    disk_quota_bytes: int | None = None
    silence: bool = False  # with drop_*: go silent instead of cutting TCP (a Wi-Fi drop: the client times out)
    fail_early: bool = False  # out of space as adbd reports it: FAIL at once, then discard DATA until DONE


class _Stream:
    """One ADB stream: our id, the client's id, and the flow-control handshake for our WRTEs."""

    def __init__(self, conn: "_Connection", local_id: int, remote_id: int):
        self.conn = conn
        self.local_id = local_id  # ours
        self.remote_id = remote_id  # the client's
        self.okay = threading.Event()
        self.closed = False
        self.closed_by_us = False

    def write(self, data: bytes) -> bool:
        """Send ``data`` in WRTE packets of at most maxdata, each after the client OKAYed the previous one."""
        view = memoryview(data)
        for start in range(0, len(view), self.conn.maxdata):
            if self.closed or not self.conn.alive:
                return False
            self.okay.clear()
            self.conn.send(P.A_WRTE, self.local_id, self.remote_id, bytes(view[start:start + self.conn.maxdata]))
            if not self.okay.wait(WAIT_S) or self.closed:
                return False
        return True

    def close_from_device(self) -> None:
        if not self.closed:
            self.closed = True
            self.closed_by_us = True
            self.conn.send(P.A_CLSE, self.local_id, self.remote_id)

    def on_data(self, data: bytes) -> None:  # pragma: no cover - overridden
        pass

    def on_client_close(self) -> None:
        self.closed = True
        self.okay.set()


class _ShellStream(_Stream):
    """``shell:CMD`` v1: runs ``/bin/sh -c`` with device paths rewritten; streams merged stdout/stderr; no status."""

    def __init__(self, conn, local_id, remote_id, command: str):
        super().__init__(conn, local_id, remote_id)
        self.command = command
        self.proc: subprocess.Popen | None = None
        threading.Thread(target=self._run, daemon=True, name=f"adb-shell-{local_id}").start()

    def _run(self) -> None:
        sandbox = self.conn.server.sandbox
        if not self.command.strip():
            self.close_from_device()  # interactive shells are not supported
            return
        if self.conn.server.pty:
            self._run_on_pty()
            return
        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", sandbox.rewrite(self.command)], cwd=sandbox.root, env=sandbox.env(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.conn.server.process_groups.append(self.proc.pid)  # its own session: pgid == pid
        fd = self.proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 65536)
            if not chunk or not self.write(chunk):
                break
        self.proc.stdout.close()
        if self.closed and self.proc.poll() is None:
            self.proc.kill()  # the client went away: end the shell (detached children survive, as on a phone)
        try:
            self.proc.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if self.conn.alive:
            self.close_from_device()

    def _run_on_pty(self) -> None:
        """What old daemons do: the command's shell is a session leader with a cooked PTY as its controlling
        terminal (``\\n`` → ``\\r\\n``); when that shell exits, the session is hung up (SIGHUP to its process
        group, which holds everything it backgrounded), and the stream stays open while anything still holds the
        PTY."""
        import fcntl
        import termios

        sandbox = self.conn.server.sandbox
        master, slave = os.openpty()

        def _take_terminal():
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", sandbox.rewrite(self.command)], cwd=sandbox.root, env=sandbox.env(),
            stdin=slave, stdout=slave, stderr=slave, start_new_session=True, preexec_fn=_take_terminal,
        )
        os.close(slave)
        self.conn.server.process_groups.append(self.proc.pid)
        hung_up = False
        try:
            while not self.closed:
                if not hung_up and self.proc.poll() is not None:
                    hung_up = True
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(self.proc.pid, signal.SIGHUP)
                ready, _, _ = select.select([master], [], [], 0.1)
                if not ready:
                    continue
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: no process holds the PTY any more
                    break
                if not chunk or not self.write(chunk):
                    break
        finally:
            os.close(master)
        if self.closed and self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(WAIT_S)
        if self.conn.alive:
            self.close_from_device()

    def on_data(self, data: bytes) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
            except OSError:
                pass

    def on_client_close(self) -> None:
        super().on_client_close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()


class _SyncStream(_Stream):
    """``sync:``: the file-transfer sub-protocol (AOSP SYNC.TXT), fed by the client's WRTE payloads."""

    def __init__(self, conn, local_id, remote_id):
        super().__init__(conn, local_id, remote_id)
        self.buf = bytearray()
        self.cond = threading.Condition()
        threading.Thread(target=self._run, daemon=True, name=f"adb-sync-{local_id}").start()

    def on_data(self, data: bytes) -> None:
        with self.cond:
            self.buf += data
            self.cond.notify_all()

    def on_client_close(self) -> None:
        super().on_client_close()
        with self.cond:
            self.cond.notify_all()

    def _read(self, n: int) -> bytes | None:
        with self.cond:
            deadline = time.monotonic() + WAIT_S
            while len(self.buf) < n:
                if self.closed or not self.conn.alive or time.monotonic() > deadline:
                    return None
                self.cond.wait(0.5)
            out = bytes(self.buf[:n])
            del self.buf[:n]
            return out

    def _fail(self, message: str) -> None:
        msg = message.encode()
        self.write(b"FAIL" + struct.pack("<I", len(msg)) + msg)

    def _run(self) -> None:
        try:
            while True:
                head = self._read(8)
                if head is None:
                    return
                ident, length = head[:4], struct.unpack("<I", head[4:])[0]
                if ident == b"QUIT":
                    self.close_from_device()
                    return
                path = (self._read(length) or b"").decode("utf-8", "replace")
                handlers = {b"STAT": self._stat, b"LIST": self._list, b"SEND": self._send, b"RECV": self._recv}
                handler = handlers.get(ident)
                if handler is None:
                    self._fail(f"unknown sync command {ident!r}")
                    self.close_from_device()
                    return
                if handler(path) is False:
                    return
        except Exception:  # a device bug must show up in the test log, not hang the client
            log.exception("sync stream failed")
            self.close_from_device()

    def _stat(self, path: str):
        host = self.conn.server.sandbox.host_path(path)
        try:
            st = os.lstat(host) if host is not None else None
        except OSError:
            st = None
        mode, size, mtime = (st.st_mode, st.st_size, int(st.st_mtime)) if st else (0, 0, 0)
        self.write(b"STAT" + struct.pack("<3I", mode, size & 0xFFFFFFFF, mtime))

    def _list(self, path: str):
        host = self.conn.server.sandbox.host_path(path)
        out = bytearray()
        if host is not None and host.is_dir():
            for entry in sorted(os.listdir(host)):
                st = os.lstat(host / entry)
                name = entry.encode()
                out += b"DENT" + struct.pack("<4I", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime), len(name))
                out += name
        out += b"DONE" + struct.pack("<4I", 0, 0, 0, 0)
        self.write(bytes(out))

    def _send(self, spec: str):
        server = self.conn.server
        path, _, mode_text = spec.rpartition(",")
        if not path:
            path, mode_text = spec, "33188"
        mode = int(mode_text) if mode_text.isdigit() else 0o100644
        host = server.sandbox.host_path(path)
        error = None
        tmp = None
        fh = None
        if host is None:
            error = f"couldn't create file: Read-only file system ({path})"
        else:
            host.parent.mkdir(parents=True, exist_ok=True)  # adbd's secure_mkdirs (feature fixed_push_mkdir)
            tmp = host.with_name(f".{host.name}.adbtmp")
            fh = open(tmp, "wb")
        received = 0
        while True:
            head = self._read(8)
            if head is None:
                if fh:
                    fh.close()
                    tmp.unlink(missing_ok=True)
                return False
            ident, length = head[:4], struct.unpack("<I", head[4:])[0]
            if ident == b"DATA":
                data = self._read(length)
                if data is None:
                    return False
                received += len(data)
                if error is None and server.faults.disk_quota_bytes is not None and \
                        received > server.faults.disk_quota_bytes:
                    error = "write failed: No space left on device"
                    if server.faults.fail_early:  # what adbd does: FAIL now, the client reads it after its DONE
                        server.record("push-failed", path, error)
                        self._fail(error)
                if error is None:
                    fh.write(data)
            elif ident == b"DONE":
                if fh:
                    fh.close()
                if error is not None:
                    if tmp is not None:
                        tmp.unlink(missing_ok=True)
                    if not server.faults.fail_early:
                        server.record("push-failed", path, error)
                        self._fail(error)
                    return None
                os.chmod(tmp, stat_mod.S_IMODE(mode) or 0o644)
                os.utime(tmp, (length, length))
                os.replace(tmp, host)
                server.record("push", path, received)
                self.write(b"OKAY" + struct.pack("<I", 0))
                return None
            else:
                if fh:
                    fh.close()
                    tmp.unlink(missing_ok=True)
                self._fail(f"invalid data message {ident!r}")
                self.close_from_device()
                return False

    def _recv(self, path: str):
        server = self.conn.server
        host = server.sandbox.host_path(path)
        if host is None or not host.is_file():
            self._fail("open failed: No such file or directory")
            return None
        server.record("pull", path)
        out = bytearray()
        with open(host, "rb") as fh:
            while True:
                chunk = fh.read(64 * 1024)
                if not chunk:
                    break
                out += b"DATA" + struct.pack("<I", len(chunk)) + chunk
                if len(out) >= self.conn.maxdata:
                    if not self.write(bytes(out)):
                        return False
                    out.clear()
        out += b"DONE" + struct.pack("<I", 0)
        self.write(bytes(out))
        return None


class _Connection:
    """One TCP client: handshake, authentication, stream multiplexing."""

    def __init__(self, server: "LoopbackAdbDevice", sock: socket.socket):
        self.server = server
        self.sock = sock
        self.wlock = threading.Lock()
        self.alive = True
        self.online = False
        self.maxdata = MAXDATA
        self.version = P.A_VERSION_SKIP_CHECKSUM
        self.token = os.urandom(20)
        self.last_signature: tuple[bytes, bytes] | None = None
        self.streams: dict[int, _Stream] = {}
        self.next_id = 1
        self.silent = False

    def send(self, cmd: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        packet = P.pack(cmd, arg0, arg1, data)
        with self.wlock:
            if not self.alive or self.silent:
                return
            try:
                self.sock.sendall(packet)
            except OSError:
                self.kill()

    def kill(self) -> None:
        """Cut the TCP connection without a goodbye (what a pulled cable looks like)."""
        self.alive = False
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for stream in list(self.streams.values()):
            stream.on_client_close()

    def _banner(self) -> bytes:
        props = self.server.sandbox.props
        return (f"device::ro.product.name={props['ro.product.name']};ro.product.model={props['ro.product.model']};"
                f"ro.product.device={props['ro.product.device']};features=fixed_push_mkdir").encode()

    def _send_cnxn(self) -> None:
        self.online = True
        self.send(P.A_CNXN, self.version, self.maxdata, self._banner())

    def serve(self) -> None:
        rfile = self.sock.makefile("rb", buffering=MAXDATA)
        try:
            while self.alive and not self.server.stopping.is_set():
                head = rfile.read(P.HEADER.size)
                if len(head) < P.HEADER.size:
                    break
                cmd, arg0, arg1, length, _checksum, _ = P.unpack_header(head)
                data = rfile.read(length) if length else b""
                if len(data) < length:
                    break
                if self.silent:
                    continue  # a link that went dead: nothing arrives on the other side any more
                if self.server.should_drop(cmd, data):
                    self.server.record("drop", P.NAMES.get(cmd, hex(cmd)))
                    if self.server.faults.silence:
                        self.silent = True
                        continue
                    break
                self.handle(cmd, arg0, arg1, data)
        except (OSError, ValueError) as exc:
            log.debug("connection ended: %s", exc)
        finally:
            self.kill()

    def handle(self, cmd: int, arg0: int, arg1: int, data: bytes) -> None:
        srv = self.server
        if cmd == P.A_CNXN:
            self.version = min(arg0, P.A_VERSION_SKIP_CHECKSUM)
            self.maxdata = min(arg1, srv.maxdata) if arg1 else srv.maxdata
            srv.record("cnxn", data.rstrip(b"\0").decode("utf-8", "replace"))
            self.token = os.urandom(20)
            self.online = False
            self.send(P.A_AUTH, P.AUTH_TOKEN, 0, self.token)
        elif cmd == P.A_AUTH:
            if arg0 == P.AUTH_SIGNATURE:
                self.last_signature = (self.token, data)
                if any(P.verify_token_signature(k, self.token, data) for k in srv.authorized_keys):
                    srv.record("auth", "signature")
                    self._send_cnxn()
                else:
                    self.token = os.urandom(20)
                    self.send(P.A_AUTH, P.AUTH_TOKEN, 0, self.token)
            elif arg0 == P.AUTH_RSAPUBLICKEY:
                if srv.faults.refuse_auth:
                    srv.record("auth", "refused")
                    return  # like a phone whose "Allow USB debugging?" prompt nobody answers
                key = P.decode_adb_public_key(data)
                # The signature the client sent for the previous token, checked against the key it now offers:
                # recorded so tests can see that adb's signing and our verification agree.
                verified = self.last_signature is not None and P.verify_token_signature(key, *self.last_signature)
                srv.record("auth", "publickey", verified)
                srv.authorized_keys.append(key)
                self._send_cnxn()
        elif not self.online:
            return  # adbd ignores everything else until the connection is authenticated
        elif cmd == P.A_OPEN:
            dest = data.rstrip(b"\0").decode("utf-8", "replace")
            srv.record("open", dest)
            local_id = self.next_id
            self.next_id += 1
            if dest.startswith("shell:"):
                self.send(P.A_OKAY, local_id, arg0)
                self.streams[local_id] = _ShellStream(self, local_id, arg0, dest[len("shell:"):])
            elif dest == "sync:":
                self.send(P.A_OKAY, local_id, arg0)
                self.streams[local_id] = _SyncStream(self, local_id, arg0)
            else:
                self.send(P.A_CLSE, 0, arg0)  # unknown service: refused, as adbd does
        elif cmd == P.A_WRTE:
            stream = self.streams.get(arg1)
            if stream is not None:
                stream.on_data(data)
                self.send(P.A_OKAY, stream.local_id, stream.remote_id)
        elif cmd == P.A_OKAY:
            stream = self.streams.get(arg1)
            if stream is not None:
                stream.okay.set()
        elif cmd == P.A_CLSE:
            stream = self.streams.pop(arg1, None)
            if stream is not None:
                was_closed_by_us = stream.closed_by_us
                stream.on_client_close()
                if not was_closed_by_us:
                    self.send(P.A_CLSE, stream.local_id, stream.remote_id)


class LoopbackAdbDevice:
    """Threaded ADB device on 127.0.0.1. ``start()`` returns the port; ``stop()`` closes everything (bounded)."""

    def __init__(self, sandbox: Sandbox, *, faults: Faults | None = None, port: int = 0, maxdata: int = MAXDATA,
                 pty: bool = False):
        self.sandbox = sandbox
        self.pty = pty  # run shell: commands on a cooked PTY, as Android <= 6 daemons (and `adb shell -t`) do
        self.maxdata = maxdata  # largest payload offered in CNXN (older phones negotiate 4 KiB)
        self.faults = faults or Faults()
        self.authorized_keys: list = []
        self.events: list[tuple] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._drop_countdown: int | None = None
        self._drops_left = self.faults.drop_times
        self._conns: list[_Connection] = []
        self.process_groups: list[int] = []  # shells and what they left running detached, killed by stop()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self.port = self._sock.getsockname()[1]
        self._thread: threading.Thread | None = None

    @property
    def serial(self) -> str:
        return f"127.0.0.1:{self.port}"

    def record(self, *event) -> None:
        with self._lock:
            self.events.append(event)

    def events_of(self, kind: str) -> list[tuple]:
        with self._lock:
            return [e for e in self.events if e[0] == kind]

    def should_drop(self, cmd: int, data: bytes) -> bool:
        f = self.faults
        if f.drop_after_messages is None:
            return False
        with self._lock:
            if self._drops_left <= 0:
                return False
            if self._drop_countdown is None:
                if f.drop_match is None or (cmd == P.A_OPEN and f.drop_match in data):
                    self._drop_countdown = f.drop_after_messages
                else:
                    return False
            else:
                self._drop_countdown -= 1
            if self._drop_countdown <= 0:
                self._drop_countdown = None
                self._drops_left -= 1
                return True
            return False

    def start(self) -> int:
        self._sock.listen(8)
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="adb-loopback")
        self._thread.start()
        return self.port

    def _accept_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self, sock)
            self._conns.append(conn)
            threading.Thread(target=conn.serve, daemon=True, name="adb-loopback-conn").start()

    def stop(self) -> None:
        self.stopping.set()
        try:
            self._sock.close()
        except OSError:
            pass
        for conn in self._conns:
            conn.kill()
        if self._thread is not None:
            self._thread.join(5)
        # Detached runners (nohup … &) stay in their shell's process group: end them so nothing outlives the test.
        for pgid in self.process_groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def __enter__(self) -> "LoopbackAdbDevice":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_device(root: pathlib.Path, **kwargs) -> LoopbackAdbDevice:
    """Convenience for scripts: sandbox at ``root`` + started device."""
    abi32 = kwargs.pop("abi32", False)
    dev = LoopbackAdbDevice(Sandbox(root, abi32=abi32), **kwargs)
    dev.start()
    return dev
