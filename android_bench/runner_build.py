"""Build the ``edgeprune_ort_runner`` bundle (C program against ONNX Runtime's C API) from registry packages only.

Sources (nothing else is downloaded):

* ``libonnxruntime.so.<ver>``: PyPI's ``onnxruntime`` wheel for the target (``manylinux_2_28_aarch64`` for arm64,
  the x86_64 manylinux wheel for x86_64 — or the copy already installed in this interpreter when its version
  matches). The Python wheels ship the standalone C library next to the pybind module.
* ONNX Runtime's C headers: the npm package ``com.github.asus4.onnxruntime`` (it bundles the official ORT builds;
  only the ``onnxruntime_c_api.h`` family of headers is extracted, none of its binaries are used).
* arm64 glibc loader and libraries (``ld-linux-aarch64.so.1``, libc, libm, libdl, libpthread, librt, libstdc++,
  libgcc_s): Debian's cross toolchain packages (``gcc-aarch64-linux-gnu``, ``libc6-dev-arm64-cross``,
  ``libstdc++6-arm64-cross``, ``libgcc-s1-arm64-cross``), installed with apt-get when missing and running as root.

The bundle is cached in ``<cache>/runner/<ort version>-<arch>/`` (``<cache>`` = ``$EDGEPRUNE_RUNNER_CACHE`` or
``$XDG_CACHE_HOME/edgeprune`` or ``~/.cache/edgeprune``) and reused while the C source and the ORT version match.

Bundle layout (every file is pushed as is; ``run.sh`` is the entry point)::

    run.sh                   starts the runner through the bundled loader (arm64) or directly (x86_64)
    edgeprune_ort_runner     the ELF executable
    lib/libonnxruntime.so.1  ONNX Runtime
    lib/ld-linux-aarch64.so.1, lib/libc.so.6, ...   (arm64 only: glibc and the C++ runtime)
    BUNDLE.json              versions, sources and sizes (not needed at run time)
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

from android_bench.errors import AndroidBenchError

log = logging.getLogger(__name__)

SOURCE = pathlib.Path(__file__).parent / "runner" / "edgeprune_ort_runner.c"
BINARY_NAME = "edgeprune_ort_runner"
DEFAULT_ORT_VERSION = "1.31.1"
HEADERS_NPM_PACKAGE = "com.github.asus4.onnxruntime"
HEADERS_NPM_VERSION = "0.4.9"
_HEADERS_MEMBER_RE = re.compile(
    r"^package/Plugins/iOS~/onnxruntime\.xcframework/ios-arm64/onnxruntime\.framework/Headers/([^/]+\.h)$"
)
ARCHES = ("arm64", "x86_64")
_WHEEL_PLATFORMS = {
    "arm64": ["manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux2014_aarch64", "manylinux_2_17_aarch64"],
    "x86_64": ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux2014_x86_64", "manylinux_2_17_x86_64"],
}
CROSS_PREFIX = "aarch64-linux-gnu-"
CROSS_SYSROOT_LIB = pathlib.Path("/usr/aarch64-linux-gnu/lib")
CROSS_APT_PACKAGES = [
    "gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross", "libstdc++6-arm64-cross", "libgcc-s1-arm64-cross",
]
ARM64_LOADER = "ld-linux-aarch64.so.1"
BUNDLE_FORMAT = 1

RUN_SH_ARM64 = """#!/bin/sh
# edgeprune ORT runner (arm64, glibc). Android has no /lib/ld-linux-aarch64.so.1 and its libc is bionic, so the
# executable is started through the glibc loader shipped in ./lib, which also resolves every library from ./lib.
# Runs from a shell (adb shell), not inside an app. EDGEPRUNE_RUNNER_EMULATOR (e.g. qemu-aarch64-static) is for
# running the bundle on a non-arm64 host in tests; leave it unset on a phone.
d=$(cd "$(dirname "$0")" && pwd)
unset LD_PRELOAD
GLIBC_TUNABLES=glibc.pthread.rseq=0
export GLIBC_TUNABLES
exec $EDGEPRUNE_RUNNER_EMULATOR "$d/lib/ld-linux-aarch64.so.1" --library-path "$d/lib" "$d/edgeprune_ort_runner" "$@"
"""

RUN_SH_X86_64 = """#!/bin/sh
# edgeprune ORT runner (x86_64, native build against the host's glibc; ONNX Runtime from ./lib via RPATH).
d=$(cd "$(dirname "$0")" && pwd)
exec "$d/edgeprune_ort_runner" "$@"
"""


class RunnerBuildError(AndroidBenchError):
    """The runner bundle could not be built (missing toolchain, registry package, or a compiler error)."""


@dataclasses.dataclass
class BuildInfo:
    """What ``BUNDLE.json`` records."""

    format: int
    arch: str
    ort_version: str
    api_version_header: int
    headers: str
    library: str
    source_sha256: str
    compiler: str
    files: dict[str, int]


# --------------------------------------------------------------------------------------------------------------
# paths


def cache_root(cache_dir: os.PathLike | str | None = None) -> pathlib.Path:
    """Folder of bundles and downloads: ``cache_dir``, ``$EDGEPRUNE_RUNNER_CACHE`` or ``~/.cache/edgeprune/runner``."""
    if cache_dir is not None:
        return pathlib.Path(cache_dir)
    if os.environ.get("EDGEPRUNE_RUNNER_CACHE"):
        return pathlib.Path(os.environ["EDGEPRUNE_RUNNER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(pathlib.Path.home() / ".cache")
    return pathlib.Path(base) / "edgeprune" / "runner"


def default_ort_version() -> str:
    """The onnxruntime version installed in this interpreter (so the device runs what the host validated)."""
    try:
        from importlib.metadata import version

        return version("onnxruntime")
    except Exception:  # noqa: BLE001 - not installed: fall back to the pinned default
        return DEFAULT_ORT_VERSION


def source_sha256() -> str:
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()


def bundle_dir(arch: str, cache_dir=None, ort_version: str | None = None) -> pathlib.Path:
    return cache_root(cache_dir) / f"{ort_version or default_ort_version()}-{arch}"


# --------------------------------------------------------------------------------------------------------------
# helpers


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    log.debug("running %s", " ".join(map(str, cmd)))
    try:
        proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    except FileNotFoundError as exc:
        raise RunnerBuildError(f"{what}: {cmd[0]} not found ({exc})") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise RunnerBuildError(f"{what} failed (exit {proc.returncode}): " + " | ".join(tail))
    return proc


@contextlib.contextmanager
def _locked(path: pathlib.Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _elf_machine(path: pathlib.Path) -> int:
    head = path.read_bytes()[:20]
    if head[:4] != b"\x7fELF":
        raise RunnerBuildError(f"{path} is not an ELF file")
    return int.from_bytes(head[18:20], "little")


ELF_MACHINE = {"arm64": 183, "x86_64": 62}  # EM_AARCH64, EM_X86_64


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


# --------------------------------------------------------------------------------------------------------------
# ingredients


def _ensure_cross_toolchain() -> None:
    """The aarch64 cross compiler with its glibc headers and runtime libraries; apt-get install them if we can."""

    def present() -> bool:
        return (
            shutil.which(CROSS_PREFIX + "gcc") is not None
            and pathlib.Path("/usr/aarch64-linux-gnu/include/stdio.h").exists()
            and (CROSS_SYSROOT_LIB / "libstdc++.so.6").exists()
            and (CROSS_SYSROOT_LIB / ARM64_LOADER).exists()
        )

    if present():
        return
    if not (_is_root() and shutil.which("apt-get")):
        raise RunnerBuildError(
            "the aarch64 cross toolchain is missing: run `apt-get install " + " ".join(CROSS_APT_PACKAGES) + "` as root"
        )
    log.info("installing the aarch64 cross toolchain with apt-get: %s", " ".join(CROSS_APT_PACKAGES))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *CROSS_APT_PACKAGES]
    try:
        _run(cmd, "apt-get install", env=env)
    except RunnerBuildError:
        _run(["apt-get", "update", "-qq"], "apt-get update", env=env)
        _run(cmd, "apt-get install", env=env)
    if not present():
        raise RunnerBuildError("the aarch64 cross toolchain is still incomplete after apt-get install")


def _fetch_headers(downloads: pathlib.Path) -> pathlib.Path:
    """ONNX Runtime's C headers from the npm package (downloaded once with ``npm pack``; only headers are kept)."""
    dest = downloads / f"headers-{HEADERS_NPM_PACKAGE}-{HEADERS_NPM_VERSION}"
    if (dest / "onnxruntime_c_api.h").exists():
        return dest
    npm = shutil.which("npm")
    if npm is None:
        raise RunnerBuildError("npm is needed once to fetch ONNX Runtime's C headers: apt-get install npm")
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:
        spec = f"{HEADERS_NPM_PACKAGE}@{HEADERS_NPM_VERSION}"
        log.info("fetching ONNX Runtime C headers: npm pack %s (~150 MB, only the headers are kept)", spec)
        proc = _run([npm, "pack", spec, "--pack-destination", tmp, "--silent"], f"npm pack {spec}", cwd=tmp)
        tgz = next(pathlib.Path(tmp).glob("*.tgz"), None)
        if tgz is None:
            raise RunnerBuildError(f"npm pack {spec} produced no tarball ({proc.stdout.strip()})")
        staging = pathlib.Path(tmp) / "headers"
        staging.mkdir()
        found = 0
        with tarfile.open(tgz, "r:gz") as tar:
            for member in tar:
                m = _HEADERS_MEMBER_RE.match(member.name)
                if m and member.isfile():
                    (staging / m.group(1)).write_bytes(tar.extractfile(member).read())
                    found += 1
        if not (staging / "onnxruntime_c_api.h").exists():
            raise RunnerBuildError(f"{spec} has no onnxruntime_c_api.h where expected ({found} headers found)")
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    return dest


def header_api_version(headers: pathlib.Path) -> int:
    m = re.search(r"^#define ORT_API_VERSION (\d+)", (headers / "onnxruntime_c_api.h").read_text(), re.M)
    if not m:
        raise RunnerBuildError(f"cannot find ORT_API_VERSION in {headers / 'onnxruntime_c_api.h'}")
    return int(m.group(1))


def _installed_library(ort_version: str) -> pathlib.Path | None:
    """The x86_64 libonnxruntime.so of the onnxruntime installed here, when it is the wanted version."""
    if os.uname().machine != "x86_64" or default_ort_version() != ort_version:
        return None
    try:
        import importlib.util

        spec = importlib.util.find_spec("onnxruntime")
    except Exception:  # noqa: BLE001
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    lib = pathlib.Path(list(spec.submodule_search_locations)[0]) / "capi" / f"libonnxruntime.so.{ort_version}"
    return lib if lib.exists() else None


def _fetch_library(arch: str, ort_version: str, downloads: pathlib.Path) -> tuple[pathlib.Path, str]:
    """``libonnxruntime.so.<ver>`` for ``arch`` and a description of where it came from."""
    if arch == "x86_64":
        local = _installed_library(ort_version)
        if local is not None:
            return local, f"installed onnxruntime {ort_version} wheel ({local})"
    target = downloads / f"libonnxruntime-{ort_version}-{arch}.so"
    origin_file = target.with_suffix(".origin")
    if target.exists() and origin_file.exists():
        return target, origin_file.read_text()
    downloads.mkdir(parents=True, exist_ok=True)
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", py,
               "--disable-pip-version-check", "-q", "-d", tmp]
        for plat in _WHEEL_PLATFORMS[arch]:
            cmd += ["--platform", plat]
        cmd.append(f"onnxruntime=={ort_version}")
        log.info("downloading the %s onnxruntime %s wheel from PyPI (pip download)", arch, ort_version)
        _run(cmd, f"pip download onnxruntime=={ort_version} for {arch}")
        wheel = next(pathlib.Path(tmp).glob("onnxruntime-*.whl"), None)
        if wheel is None:
            raise RunnerBuildError(f"pip download produced no onnxruntime wheel for {arch}")
        member = f"onnxruntime/capi/libonnxruntime.so.{ort_version}"
        with zipfile.ZipFile(wheel) as zf:
            if member not in zf.namelist():
                raise RunnerBuildError(f"{wheel.name} has no {member}: cannot link the C runner against it")
            with zf.open(member) as src, open(target.with_suffix(".part"), "wb") as dst:
                shutil.copyfileobj(src, dst)
        target.with_suffix(".part").rename(target)
        origin = f"PyPI wheel {wheel.name}, {member}"
        origin_file.write_text(origin)
    if _elf_machine(target) != ELF_MACHINE[arch]:
        raise RunnerBuildError(f"{target} is not a {arch} library")
    return target, origin


def _needed(readelf: str, path: pathlib.Path) -> list[str]:
    out = _run([readelf, "-d", path], f"readelf {path.name}").stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def _arm64_runtime_libs(binary: pathlib.Path, ort_lib: pathlib.Path) -> list[pathlib.Path]:
    """The glibc/libstdc++ closure of the binary and ONNX Runtime, from the cross toolchain's sysroot."""
    readelf = shutil.which(CROSS_PREFIX + "readelf") or shutil.which("readelf")
    if readelf is None:
        raise RunnerBuildError("readelf not found (binutils-aarch64-linux-gnu)")
    todo = _needed(readelf, binary) + _needed(readelf, ort_lib) + [ARM64_LOADER]
    seen: dict[str, pathlib.Path] = {}
    while todo:
        name = todo.pop()
        if name in seen or name.startswith("libonnxruntime"):
            continue
        src = CROSS_SYSROOT_LIB / name
        if not src.exists():
            raise RunnerBuildError(
                f"{name} is needed but not in {CROSS_SYSROOT_LIB} (apt-get install libc6-arm64-cross)")
        seen[name] = src
        todo += _needed(readelf, src.resolve())
    return [seen[k] for k in sorted(seen)]


# --------------------------------------------------------------------------------------------------------------
# build


def _compile(arch: str, headers: pathlib.Path, ort_lib: pathlib.Path, out: pathlib.Path, work: pathlib.Path) -> str:
    linkdir = work / "link"
    linkdir.mkdir()
    shutil.copy2(ort_lib, linkdir / "libonnxruntime.so.1")
    (linkdir / "libonnxruntime.so").symlink_to("libonnxruntime.so.1")
    if arch == "arm64":
        cc = CROSS_PREFIX + "gcc"
        extra = [f"-Wl,-rpath-link,{CROSS_SYSROOT_LIB}"]
    else:
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise RunnerBuildError("no C compiler (cc/gcc) found for the x86_64 build: apt-get install gcc")
        extra = []
    cmd = [cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-I", headers, SOURCE, "-L", linkdir, "-lonnxruntime",
           "-Wl,-rpath,$ORIGIN/lib", *extra, "-o", out]
    log.info("compiling %s for %s", SOURCE.name, arch)
    proc = _run(cmd, f"compiling the runner for {arch}")
    if proc.stderr.strip():
        log.warning("compiler warnings: %s", proc.stderr.strip())
    version = _run([cc, "--version"], "cc --version").stdout.splitlines()[0]
    return version


def build_bundle(arch: str, cache_dir=None, *, ort_version: str | None = None, force: bool = False) -> pathlib.Path:
    """Build (or reuse) the runner bundle for ``arch`` ("arm64" or "x86_64") and return its folder.

    The folder holds ``run.sh`` (entry point), ``edgeprune_ort_runner``, ``lib/`` and ``BUNDLE.json``.
    Reused when it exists for the same ORT version and C source; otherwise built from registry packages.
    """
    if arch not in ARCHES:
        raise RunnerBuildError(f"unknown runner arch {arch!r}: expected one of {', '.join(ARCHES)}")
    ort_version = ort_version or default_ort_version()
    root = cache_root(cache_dir)
    dest = root / f"{ort_version}-{arch}"
    src_hash = source_sha256()
    with _locked(root / f".{ort_version}-{arch}.lock"):
        if not force and _bundle_ok(dest, src_hash, arch):
            log.debug("reusing runner bundle %s", dest)
            return dest
        log.info("building the %s runner bundle for ONNX Runtime %s in %s", arch, ort_version, dest)
        downloads = root / "downloads"
        if arch == "arm64":
            _ensure_cross_toolchain()
        headers = _fetch_headers(downloads)
        api = header_api_version(headers)
        ort_lib, lib_origin = _fetch_library(arch, ort_version, downloads)
        lib_minor = int(ort_version.split(".")[1])
        if api > lib_minor:
            log.warning("headers declare ORT API %d but ONNX Runtime %s offers up to %d: the runner falls back to an "
                        "older API number at run time", api, ort_version, lib_minor)
        with tempfile.TemporaryDirectory(dir=root, prefix=f".build-{arch}-") as tmp:
            work = pathlib.Path(tmp)
            stage = work / "bundle"
            (stage / "lib").mkdir(parents=True)
            binary = stage / BINARY_NAME
            compiler = _compile(arch, headers, ort_lib, binary, work)
            shutil.copy2(ort_lib, stage / "lib" / "libonnxruntime.so.1")
            if arch == "arm64":
                for lib in _arm64_runtime_libs(binary, ort_lib):
                    shutil.copy2(lib.resolve(), stage / "lib" / lib.name)
                (stage / "run.sh").write_text(RUN_SH_ARM64)
            else:
                (stage / "run.sh").write_text(RUN_SH_X86_64)
            for p in [stage / "run.sh", binary, *(stage / "lib").iterdir()]:
                p.chmod(0o755)
            for p in [binary, *(stage / "lib").glob("*.so*")]:
                if _elf_machine(p) != ELF_MACHINE[arch]:
                    raise RunnerBuildError(f"{p.name} in the {arch} bundle has the wrong ELF machine")
            files = {str(p.relative_to(stage)): p.stat().st_size for p in sorted(stage.rglob("*")) if p.is_file()}
            info = BuildInfo(
                format=BUNDLE_FORMAT, arch=arch, ort_version=ort_version, api_version_header=api,
                headers=f"npm {HEADERS_NPM_PACKAGE}@{HEADERS_NPM_VERSION}", library=lib_origin,
                source_sha256=src_hash, compiler=compiler, files=files,
            )
            (stage / "BUNDLE.json").write_text(json.dumps(dataclasses.asdict(info), indent=2) + "\n")
            if dest.exists():
                shutil.rmtree(dest)
            stage.rename(dest)
        log.info("runner bundle ready: %s (%d files, %.1f MB)", dest, len(files), sum(files.values()) / 1e6)
        return dest


def _bundle_ok(dest: pathlib.Path, src_hash: str, arch: str) -> bool:
    try:
        info = json.loads((dest / "BUNDLE.json").read_text())
    except (OSError, ValueError):
        return False
    if info.get("format") != BUNDLE_FORMAT or info.get("source_sha256") != src_hash or info.get("arch") != arch:
        return False
    return all((dest / name).is_file() and (dest / name).stat().st_size == size
               for name, size in info.get("files", {}).items())


def bundle_files(bundle: pathlib.Path) -> list[pathlib.Path]:
    """Every file of a bundle that must be on the device (BUNDLE.json excluded), relative paths sorted."""
    return sorted(p.relative_to(bundle) for p in bundle.rglob("*") if p.is_file() and p.name != "BUNDLE.json")


def bundle_size(bundle: pathlib.Path) -> dict[str, int]:
    """Bytes of the device files: ``raw`` and ``gzip`` (a .tar.gz of them, gzip level 6)."""
    import io

    raw = sum((bundle / p).stat().st_size for p in bundle_files(bundle))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for p in bundle_files(bundle):
            tar.add(bundle / p, arcname=str(p))
    return {"raw": raw, "gzip": len(buf.getvalue())}
