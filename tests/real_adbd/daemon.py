"""Start, kill, restart and stop Debian's adbd in its own namespaces (see the package docstring)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import pathlib
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
ADBD_REL = "usr/lib/android-sdk/platform-tools/adbd"
LIB_REL = "usr/lib/x86_64-linux-gnu"
LOADER_REL = f"{LIB_REL}/ld-linux-x86-64.so.2"
CLONE_NEWNET = 0x40000000
# Top-level folders never needed by adbd, the shell or the runner.
SKIP_TOP = {"proc", "sys", "dev", "lost+found", "old_root", "farm", "boot", "media"}


def adbd_root() -> pathlib.Path:
    return pathlib.Path(os.environ.get("EDGEPRUNE_ADBD_ROOT") or REPO / ".cache" / "adbd")


def missing_reason() -> str | None:
    """Why the real-adbd tests cannot run here (None when they can): only what a fresh Debian machine may lack."""
    root = adbd_root()
    if not (root / ADBD_REL).is_file() or not (root / LOADER_REL).exists():
        return (f"no adbd in {root}: run scripts/fetch_adbd.sh {root} (scripts/setup.sh does, as root with apt) "
                "or set EDGEPRUNE_ADBD_ROOT")
    if os.geteuid() != 0:
        return "the real-adbd tests need root for network, mount and PID namespaces (unshare)"
    for tool in ("unshare", "nsenter", "ip", "chroot"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (util-linux / iproute2 / coreutils)"
    return None


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class RealAdbd:
    """One adbd in its namespaces, with ``sandbox`` (an ``adb_loopback.Sandbox``) as its Android-like userland."""

    def __init__(self, sandbox, workdir: pathlib.Path, *, port: int = 5555, data_tmpfs_kib: int | None = None,
                 extra_env: dict[str, str] | None = None):
        self.sandbox = sandbox
        self.workdir = pathlib.Path(workdir)
        self.port = port
        self.data_tmpfs_kib = data_tmpfs_kib
        self.extra_env = dict(extra_env or {})
        self.root = adbd_root()
        self.newroot = self.workdir / "root"
        self.log_path = self.workdir / "adbd.log"
        self.holder: subprocess.Popen | None = None
        self.daemon: subprocess.Popen | None = None

    @property
    def serial(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- namespaces -----------------------------------------------------------------------------------------------
    def _holder_script(self) -> str:
        r = shlex.quote(str(self.newroot))
        sb = self.sandbox.root
        lines = ["set -e", "ip link set lo up", f"mkdir -p {r}", f"mount -t tmpfs -o mode=755 edgeprune-root {r}"]
        tops = {p for p in os.listdir("/") if p not in SKIP_TOP}
        tops |= {REPO.parts[1], pathlib.Path(sys.prefix).resolve().parts[1], self.root.resolve().parts[1]}
        for name in sorted(tops):
            src = pathlib.Path("/") / name
            dst = shlex.quote(str(self.newroot / name))
            if src.is_symlink():
                lines.append(f"ln -s {shlex.quote(os.readlink(src))} {dst}")
            elif src.is_dir():
                lines += [f"mkdir -p {dst}", f"mount --rbind {shlex.quote(str(src))} {dst}"]
        lines += [
            f"mkdir -p {r}/proc {r}/sys {r}/dev {r}/data/local/tmp {r}/sdcard",
            f"mount -t proc proc {r}/proc",  # this PID namespace's own /proc: pids the device shell sees are real
            f"mount --rbind /sys {r}/sys",
            f"mount --rbind /dev {r}/dev",
            f"mount --bind {shlex.quote(str(sb / 'proc/cpuinfo'))} {r}/proc/cpuinfo",
            f"mount --bind {shlex.quote(str(sb / 'sys/devices/system/cpu'))} {r}/sys/devices/system/cpu",
            f"mount --bind {shlex.quote(str(sb / 'sys/class/thermal'))} {r}/sys/class/thermal",
            f"mount --bind {shlex.quote(str(sb / 'sys/class/power_supply'))} {r}/sys/class/power_supply",
        ]
        if self.data_tmpfs_kib is not None:
            lines.append(f"mount -t tmpfs -o size={int(self.data_tmpfs_kib)}k,mode=1777 edgeprune-data "
                         f"{r}/data/local/tmp")
        else:
            lines.append(f"chmod 1777 {r}/data/local/tmp")
        lines += ["echo READY", "exec sleep 86400"]
        return "\n".join(lines)

    def start(self) -> "RealAdbd":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--mount", "--pid", "--fork", "--propagation", "private", "--", "/bin/sh", "-c",
             self._holder_script()],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        )
        ready, _, _ = select.select([self.holder.stdout], [], [], 20)
        line = self.holder.stdout.readline() if ready else ""
        if line.strip() != "READY":
            self.holder.kill()
            err = self.holder.stderr.read() if self.holder.poll() is not None else ""
            raise RuntimeError(f"could not set up the adbd namespaces: {line!r} {err.strip()}")
        self.start_daemon()
        return self

    @property
    def _ns_pid(self) -> int:
        """Host pid of a process inside the namespaces (unshare's forked child, PID 1 there)."""
        children = pathlib.Path(f"/proc/{self.holder.pid}/task/{self.holder.pid}/children").read_text().split()
        return int(children[0])

    def ns_command(self, argv: list[str], *, mount: bool = False) -> list[str]:
        """``argv`` run inside the private network namespace (and the mount/PID namespaces with ``mount=True``)."""
        if not mount:
            return ["nsenter", "-t", str(self._ns_pid), "--net", "--", *argv]
        return ["nsenter", "-t", str(self._ns_pid), "--net", "--mount", "--pid", "--", "chroot", str(self.newroot),
                *argv]

    @contextlib.contextmanager
    def in_netns(self):
        """Run the body with this thread in the private network namespace (sockets opened there stay there)."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/proc/{self._ns_pid}/ns/net", os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield self
            finally:
                _setns(own)
        finally:
            os.close(own)
            os.close(target)

    # -- the daemon -----------------------------------------------------------------------------------------------
    def start_daemon(self) -> None:
        lib = self.root / LIB_REL
        env = {"PATH": f"{self.sandbox.root / 'bin'}:/usr/bin:/bin", "ADBD_PORT": str(self.port),
               "HOME": "/data/local/tmp", "TMPDIR": "/data/local/tmp", "LANG": "C.UTF-8", **self.extra_env}
        argv = ["env", "-i", *(f"{k}={v}" for k, v in env.items()), str(self.root / LOADER_REL), "--library-path",
                f"{lib}/android:{lib}", str(self.root / ADBD_REL)]
        log = open(self.log_path, "ab")
        self.daemon = subprocess.Popen(self.ns_command(argv, mount=True), stdout=log, stderr=log,
                                       stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with self.in_netns():
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            if self.daemon.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"adbd did not start listening on {self.port}: {self.log_text()[-800:]}")

    def daemon_pid(self) -> int | None:
        """Host pid of adbd itself (nsenter forks it for the PID namespace)."""
        if self.daemon is None or self.daemon.poll() is not None:
            return None
        path = pathlib.Path(f"/proc/{self.daemon.pid}/task/{self.daemon.pid}/children")
        kids = path.read_text().split() if path.exists() else []
        return int(kids[0]) if kids else None

    def kill_daemon(self) -> None:
        """SIGKILL adbd only (what a crash or a phone losing power does to the connection); runners survive."""
        pid = self.daemon_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        if self.daemon is not None:
            self.daemon.wait(10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.kill_daemon()
        if self.holder is not None and self.holder.poll() is None:
            # PID 1 of the namespace: when it dies the kernel kills every process left in it (detached runners too).
            with contextlib.suppress(Exception):
                os.kill(self._ns_pid, signal.SIGKILL)
            self.holder.kill()
            self.holder.wait(10)
        for stream in (self.holder.stdout, self.holder.stderr) if self.holder else ():
            stream.close()

    def __enter__(self) -> "RealAdbd":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
