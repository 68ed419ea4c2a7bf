"""A folder standing for the phone's filesystem, with Android-like answers to what the harness reads.

Layout (all under ``root``)::

    data/local/tmp/   sdcard/                       device paths /data/local/tmp and /sdcard
    sys/devices/system/cpu/...  sys/class/...       fake sysfs: cpufreq, online CPUs, thermal zones, battery
    proc/cpuinfo                                    ARM-format cpuinfo (4 little + 4 big cores)
    bin/getprop bin/dumpsys bin/taskset bin/python3 bin/uname   put first on PATH
    props.txt                                       what getprop prints

Device paths are mapped by *rewriting* them in shell commands and sync paths: each occurrence of ``/data/local/tmp``,
``/sdcard``, ``/sys`` or ``/proc/cpuinfo`` that starts a path gets ``root`` prepended (see ``rewrite``). Output of
commands that print paths therefore shows the sandbox location; the harness only parses values, not paths.
``taskset`` records the requested mask in ``taskset.log`` and runs the command unpinned (the host has 2 CPUs);
``python3`` runs the test's own interpreter so the pushed onnxruntime script finds its packages.
"""

from __future__ import annotations

import os
import pathlib
import re
import stat
import sys

MAPPED_PREFIXES = ("/data/local/tmp", "/sdcard", "/sys", "/proc/cpuinfo")
_REWRITE = re.compile(r"(?<![\w./-])(" + "|".join(re.escape(p) for p in MAPPED_PREFIXES) + r")(?![\w.-])")

LITTLE_KHZ = 1844000
BIG_KHZ = 2362000

PROPS_64 = {
    "ro.product.manufacturer": "HUAWEI",
    "ro.product.model": "EML-L29",
    "ro.product.name": "EML-L29",
    "ro.product.device": "HWEML",
    "ro.product.board": "EML",
    "ro.board.platform": "kirin970",
    "ro.hardware": "kirin970",
    "ro.build.version.release": "8.1.0",
    "ro.build.version.sdk": "27",
    "ro.product.cpu.abi": "arm64-v8a",
    "ro.product.cpu.abilist": "arm64-v8a,armeabi-v7a,armeabi",
    "ro.product.cpu.abilist64": "arm64-v8a",
    "ro.product.cpu.abilist32": "armeabi-v7a,armeabi",
}
PROPS_32 = {
    **PROPS_64,
    "ro.product.model": "EML-L09-32",
    "ro.product.cpu.abi": "armeabi-v7a",
    "ro.product.cpu.abilist": "armeabi-v7a,armeabi",
    "ro.product.cpu.abilist64": "",
}


def _cpuinfo(ncpu: int, abi32: bool) -> str:
    blocks = []
    for i in range(ncpu):
        part = "0xd03" if i < ncpu // 2 else "0xd09"  # Cortex-A53 little, Cortex-A73 big
        blocks.append(
            f"processor\t: {i}\nBogoMIPS\t: 3.84\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32\n"
            f"CPU implementer\t: 0x41\nCPU architecture: {7 if abi32 else 8}\nCPU variant\t: 0x0\n"
            f"CPU part\t: {part}\nCPU revision\t: 4\n"
        )
    return "\n".join(blocks) + "\nHardware\t: Hisilicon Kirin970\n"


def _write(path: pathlib.Path, text: str, mode: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mode is not None:
        os.chmod(path, mode)


class Sandbox:
    """Creates and edits the fake phone filesystem. Tests change frequencies and temperatures through it."""

    def __init__(self, root: pathlib.Path, *, abi32: bool = False, ncpu: int = 8, python: str = sys.executable,
                 props: dict[str, str] | None = None, machine: str | None = None):
        self.root = pathlib.Path(root).resolve()
        self.ncpu = ncpu
        self.abi32 = abi32
        self.machine = machine or ("armv8l" if abi32 else "aarch64")  # what `uname -m` says
        self.props = {**(PROPS_32 if abi32 else PROPS_64), **(props or {})}
        for sub in ("data/local/tmp", "sdcard", "bin"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        _write(self.root / "proc/cpuinfo", _cpuinfo(ncpu, abi32))
        cpu = self.root / "sys/devices/system/cpu"
        _write(cpu / "online", f"0-{ncpu - 1}\n")
        _write(cpu / "possible", f"0-{ncpu - 1}\n")
        for i in range(ncpu):
            top = LITTLE_KHZ if i < ncpu // 2 else BIG_KHZ
            d = cpu / f"cpu{i}/cpufreq"
            for name, val in (("cpuinfo_min_freq", 509000), ("cpuinfo_max_freq", top), ("scaling_min_freq", 509000),
                              ("scaling_max_freq", top), ("scaling_cur_freq", top)):
                _write(d / name, f"{val}\n")
            _write(d / "scaling_governor", "schedutil\n")
        for z, (kind, temp) in enumerate((("soc_thermal", 36000), ("cluster0", 35000), ("cluster1", 36500))):
            _write(self.root / f"sys/class/thermal/thermal_zone{z}/type", kind + "\n")
            _write(self.root / f"sys/class/thermal/thermal_zone{z}/temp", f"{temp}\n")
        bat = self.root / "sys/class/power_supply/battery"
        _write(bat / "temp", "312\n")
        _write(bat / "capacity", "87\n")
        self._write_props()
        self._write_bin(python)

    # -- device paths -------------------------------------------------------------------------------------------
    def rewrite(self, text: str) -> str:
        """Prefix mapped device paths in ``text`` (a shell command or a sync path) with the sandbox root."""
        return _REWRITE.sub(lambda m: str(self.root) + m.group(1), text)

    def host_path(self, device_path: str) -> pathlib.Path | None:
        """Sandbox path for a device path under a mapped prefix, else None (the device would say permission denied)."""
        norm = os.path.normpath(device_path)
        if not any(norm == p or norm.startswith(p + "/") for p in MAPPED_PREFIXES):
            return None
        return pathlib.Path(str(self.root) + norm)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "ANDROID"))}
        env["PATH"] = f"{self.root / 'bin'}:/usr/bin:/bin"
        env["HOME"] = str(self.root / "data/local/tmp")
        env["TMPDIR"] = str(self.root / "data/local/tmp")
        return env

    # -- knobs used by tests ------------------------------------------------------------------------------------
    def set_cur_freq(self, cpu: int, khz: int) -> None:
        _write(self.root / f"sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_cur_freq", f"{khz}\n")

    def set_max_freq(self, cpu: int, khz: int) -> None:
        """What the thermal governor does when it caps a core: lower ``scaling_max_freq``."""
        _write(self.root / f"sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_max_freq", f"{khz}\n")

    def set_temp(self, zone: int, millidegrees: int) -> None:
        _write(self.root / f"sys/class/thermal/thermal_zone{zone}/temp", f"{millidegrees}\n")

    def set_thermalservice(self, status: int, temperatures: list[tuple[str, int, float]]) -> None:
        """Make ``dumpsys thermalservice`` answer like Android 10+: throttling ``status`` and (name, type, °C)."""
        lines = [f"\tTemperature{{mValue={t}, mType={kind}, mName={name}, mStatus={status}}}"
                 for name, kind, t in temperatures]
        _write(self.root / "thermalservice.txt",
               f"IsStatusOverride: false\nThermal Status: {status}\nHAL Ready: true\n"
               "Current temperatures from HAL:\n" + "\n".join(lines) + "\nCurrent cooling devices from HAL:\n")

    def taskset_masks(self) -> list[str]:
        log = self.root / "taskset.log"
        return log.read_text().split() if log.exists() else []

    # -- setup --------------------------------------------------------------------------------------------------
    def _write_props(self) -> None:
        _write(self.root / "props.txt", "".join(f"{k}={v}\n" for k, v in self.props.items()))

    def _write_bin(self, python: str) -> None:
        b = self.root / "bin"
        x = stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
        props = self.root / "props.txt"
        _write(b / "getprop", f"""#!/bin/sh
# Android getprop: no argument prints "[key]: [value]" lines, one argument prints the value.
if [ $# -eq 0 ]; then
  while IFS='=' read -r k v; do echo "[$k]: [$v]"; done < '{props}'
else
  grep -m1 "^$1=" '{props}' | cut -d= -f2-
fi
""", x)
        bat = self.root / "sys/class/power_supply/battery"
        _write(b / "dumpsys", f"""#!/bin/sh
# "dumpsys battery" in Android's format (temperature in tenths of a degree); "dumpsys thermalservice" (Android 10+)
# prints thermalservice.txt when a test wrote one (set_thermalservice), else the service is missing as on Android 8.
if [ "$1" = thermalservice ] && [ -f '{self.root / 'thermalservice.txt'}' ]; then
  cat '{self.root / 'thermalservice.txt'}'
elif [ "$1" = battery ]; then
  echo "Current Battery Service state:"
  echo "  AC powered: false"
  echo "  USB powered: true"
  echo "  status: 2"
  echo "  health: 2"
  echo "  present: true"
  echo "  level: $(cat '{bat}/capacity')"
  echo "  scale: 100"
  echo "  voltage: 4123"
  echo "  temperature: $(cat '{bat}/temp')"
  echo "  technology: Li-poly"
else
  echo "Can't find service: $1"; exit 1
fi
""", x)
        _write(b / "taskset", f"""#!/bin/sh
# Records the mask, then runs the command without pinning (the test host has fewer CPUs than the fake phone).
echo "$1" >> '{self.root / 'taskset.log'}'
shift
exec "$@"
""", x)
        _write(b / "python3", f"#!/bin/sh\nexec '{python}' \"$@\"\n", x)
        _write(b / "uname", f"""#!/bin/sh
# The phone's kernel architecture for `uname -m`; everything else from the host's uname.
if [ "$1" = -m ]; then echo {self.machine}; else exec /bin/uname "$@"; fi
""", x)
