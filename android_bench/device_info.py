"""The device record saved with every result: what phone, which cores at which clocks, how warm.

Parsers are pure functions over command output so they are testable on text; ``collect_device_info`` runs the
commands (two shell round trips) and assembles a JSON-serializable dict.
"""

from __future__ import annotations

import logging
import re
import time

log = logging.getLogger(__name__)

_SEP = "__EDGEPRUNE_SECTION__"

# ARM "CPU part" ids (implementer 0x41) → core names, for the cores phones of the last decade ship.
ARM_PARTS = {
    "0xc07": "Cortex-A7", "0xc09": "Cortex-A9", "0xc0f": "Cortex-A15", "0xc0e": "Cortex-A17",
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510",
    "0xd47": "Cortex-A710", "0xd48": "Cortex-X2", "0xd4d": "Cortex-A715", "0xd4e": "Cortex-X3",
    "0xd80": "Cortex-A520", "0xd81": "Cortex-A720", "0xd82": "Cortex-X4",
}

PROP_KEYS = {
    "manufacturer": "ro.product.manufacturer",
    "model": "ro.product.model",
    "device": "ro.product.device",
    "android_release": "ro.build.version.release",
    "sdk": "ro.build.version.sdk",
    "abi": "ro.product.cpu.abi",
    "abilist": "ro.product.cpu.abilist",
    "board": "ro.product.board",
    "platform": "ro.board.platform",
    "hardware": "ro.hardware",
}

CPU_FILES = ("cpuinfo_min_freq", "cpuinfo_max_freq", "scaling_min_freq", "scaling_max_freq", "scaling_cur_freq",
             "scaling_governor")

INFO_SCRIPT = f"""getprop
echo {_SEP}
cat /proc/cpuinfo
echo {_SEP}
cat /sys/devices/system/cpu/online
echo {_SEP}
for c in /sys/devices/system/cpu/cpu[0-9]*; do
  n=${{c##*/cpu}}
  for f in {' '.join(CPU_FILES)}; do echo "$n $f $(cat $c/cpufreq/$f 2>/dev/null)"; done
done
echo {_SEP}
for z in /sys/class/thermal/thermal_zone*; do
  echo "${{z##*/}}|$(cat $z/type 2>/dev/null)|$(cat $z/temp 2>/dev/null)"
done
echo {_SEP}
dumpsys battery 2>/dev/null || echo "  temperature: $(cat /sys/class/power_supply/battery/temp 2>/dev/null)"
"""

THERMAL_SCRIPT = (
    "for z in /sys/class/thermal/thermal_zone*; do "
    'echo "${z##*/}|$(cat $z/type 2>/dev/null)|$(cat $z/temp 2>/dev/null)"; done'
)


def parse_getprop(text: str) -> dict[str, str]:
    """``[key]: [value]`` lines → dict (multi-line values are cut at their first line)."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^\[([^\]]+)\]: \[([^\]]*)\]", text, re.M)}


def parse_cpuinfo(text: str) -> dict:
    """ARM ``/proc/cpuinfo`` → {"cores": [{"cpu", "part", "name"}], "hardware"}; unknown parts keep their id."""
    cores = []
    hardware = None
    for block in re.split(r"\n\s*\n", text):
        fields = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip().lower()] = value.strip()
        if "processor" in fields and fields["processor"].isdigit():
            part = fields.get("cpu part")
            cores.append({"cpu": int(fields["processor"]), "implementer": fields.get("cpu implementer"),
                          "part": part, "name": ARM_PARTS.get(part or "", part or fields.get("model name"))})
        if "hardware" in fields:
            hardware = fields["hardware"]
    return {"cores": cores, "hardware": hardware}


def parse_cpu_list(text: str) -> list[int]:
    """Kernel CPU list such as ``0-3,6`` → [0, 1, 2, 3, 6]."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def parse_cpufreq(text: str) -> dict[int, dict]:
    """``N file value`` lines → {cpu: {file: value}} with frequencies as ints (kHz); missing files are omitted."""
    out: dict[int, dict] = {}
    for line in text.splitlines():
        parts = line.split(maxsplit=2)
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        cpu, name, value = int(parts[0]), parts[1], parts[2].strip()
        entry = out.setdefault(cpu, {})
        entry[name] = int(value) if value.isdigit() else value
    return out


def _celsius(raw: str) -> float | None:
    """Thermal zones report millidegrees on most kernels, whole degrees on a few; normalize to °C."""
    try:
        value = float(raw)
    except ValueError:
        return None
    return value / 1000.0 if abs(value) >= 200 else value


def parse_thermal(text: str) -> list[dict]:
    """``zone|type|temp`` lines → [{"zone", "type", "temp_c"}] (zones without a readable temperature skipped)."""
    zones = []
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) != 3:
            continue
        temp = _celsius(parts[2].strip())
        if temp is not None:
            zones.append({"zone": parts[0].strip(), "type": parts[1].strip(), "temp_c": temp})
    return zones


def parse_battery(text: str) -> dict:
    """``dumpsys battery`` → {"temp_c", "level"}; temperature is in tenths of a degree there."""
    out: dict = {"temp_c": None, "level": None}
    m = re.search(r"^\s*temperature:\s*(-?\d+)", text, re.M)
    if m:
        out["temp_c"] = int(m.group(1)) / 10.0
    m = re.search(r"^\s*level:\s*(\d+)", text, re.M)
    if m:
        out["level"] = int(m.group(1))
    return out


def big_core_mask(cpufreq: dict[int, dict], online: list[int] | None = None) -> tuple[str, list[int]]:
    """Hex taskset mask of the cores with the highest ``cpuinfo_max_freq`` (the big cluster) and their numbers."""
    maxes = {cpu: v.get("cpuinfo_max_freq") for cpu, v in cpufreq.items() if isinstance(v.get("cpuinfo_max_freq"), int)}
    if online is not None:
        maxes = {cpu: f for cpu, f in maxes.items() if cpu in online} or maxes
    if not maxes:
        return "", []
    top = max(maxes.values())
    cores = sorted(cpu for cpu, f in maxes.items() if f == top)
    return mask_of(cores), cores


def mask_of(cores: list[int]) -> str:
    return format(sum(1 << c for c in cores), "x")


def cores_of(mask: str) -> list[int]:
    value = int(mask, 16)
    return [i for i in range(value.bit_length()) if value >> i & 1]


def max_temperature(thermal: list[dict], battery: dict | None = None) -> float | None:
    temps = [z["temp_c"] for z in thermal]
    if battery and battery.get("temp_c") is not None:
        temps.append(battery["temp_c"])
    return max(temps) if temps else None


def read_thermal(conn) -> list[dict]:
    out, _ = conn.run(THERMAL_SCRIPT)
    return parse_thermal(out)


def collect_device_info(conn) -> dict:
    """Everything the record needs, as a plain JSON-serializable dict."""
    out, _rc = conn.run(INFO_SCRIPT)
    sections = out.split(_SEP + "\n")
    sections += [""] * (6 - len(sections))
    props = parse_getprop(sections[0])
    cpuinfo = parse_cpuinfo(sections[1])
    online = parse_cpu_list(sections[2]) if sections[2].strip() else []
    cpufreq = parse_cpufreq(sections[3])
    thermal = parse_thermal(sections[4])
    battery = parse_battery(sections[5])
    mask, big = big_core_mask(cpufreq, online or None)
    names = {c["cpu"]: c["name"] for c in cpuinfo["cores"]}
    cpus = [{"cpu": cpu, "core": names.get(cpu), "online": cpu in online, **{k: v for k, v in cpufreq[cpu].items()}}
            for cpu in sorted(cpufreq)]
    for cpu in sorted(set(names) - set(cpufreq)):
        cpus.append({"cpu": cpu, "core": names[cpu], "online": cpu in online})
    info = {
        "serial": conn.serial,
        **{key: props.get(prop) for key, prop in PROP_KEYS.items()},
        "abilist": [a for a in props.get("ro.product.cpu.abilist", "").split(",") if a]
        or [a for a in [props.get("ro.product.cpu.abi")] if a],
        "cpu_hardware": cpuinfo["hardware"],
        "online_cpus": online,
        "cpus": cpus,
        "big_cores": big,
        "big_core_mask": mask,
        "thermal_zones": thermal,
        "battery": battery,
        "collected_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    log.debug("device info: %s %s", info["manufacturer"], info["model"])
    return info
