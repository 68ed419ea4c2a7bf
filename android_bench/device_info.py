"""The device record saved with every result: what phone, which cores at which clocks, how warm.

Parsers are pure functions over command output so they are testable on text; ``collect_device_info`` runs the
commands (one shell round trip) and assembles a JSON-serializable dict. Core choice (``select_cores``) and
temperatures (``thermal_snapshot``) live here too, because both are read from the same records.
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
             "scaling_governor", "related_cpus")

# android.os.Temperature types; BCL_* are battery voltage / current / percentage, not temperatures.
TEMPERATURE_TYPES = {-1: "unknown", 0: "cpu", 1: "gpu", 2: "battery", 3: "skin", 4: "usb_port", 5: "power_amplifier",
                     6: "bcl_voltage", 7: "bcl_current", 8: "bcl_percentage", 9: "npu", 10: "tpu", 11: "display",
                     12: "modem", 13: "soc"}
NOT_TEMPERATURE_TYPES = {6, 7, 8}
# android.os.Temperature / PowerManager throttling status.
THROTTLING_STATUS = {0: "none", 1: "light", 2: "moderate", 3: "severe", 4: "critical", 5: "emergency", 6: "shutdown"}

_ZONES = ('for z in /sys/class/thermal/thermal_zone*; do '
          'echo "${z##*/}|$(cat $z/type 2>/dev/null)|$(cat $z/temp 2>/dev/null)"; done')

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
{_ZONES}
echo {_SEP}
dumpsys battery 2>/dev/null || echo "  temperature: $(cat /sys/class/power_supply/battery/temp 2>/dev/null)"
echo {_SEP}
uname -m 2>/dev/null
echo {_SEP}
echo "cpuset $(cat /proc/self/cpuset 2>/dev/null)"
grep -i '^Cpus_allowed_list' /proc/self/status 2>/dev/null
echo {_SEP}
dumpsys thermalservice 2>/dev/null
true
"""
N_SECTIONS = 9

THERMAL_SCRIPT = f"{_ZONES}; echo {_SEP}; dumpsys thermalservice 2>/dev/null; true"


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
    """A thermal zone's reading in °C. Kernels report millidegrees (35000), some drivers tenths (352) or whole
    degrees (35): the magnitude tells which. Readings outside -40…200 °C after scaling are not temperatures."""
    try:
        value = float(raw)
    except ValueError:
        return None
    if abs(value) >= 1000:
        value /= 1000.0
    elif abs(value) >= 200:
        value /= 10.0
    return value if -40.0 <= value <= 200.0 else None


# Zone types that report battery charge, current, voltage or BCL trip levels rather than a temperature.
_NOT_TEMPERATURE_ZONE = re.compile(
    r"ibat|vbat|ibus|vbus|bcl|curr|volt|charge|capacity|[-_]lvl|level|ocv|cycle|^soc$|^battery$|"
    r"(batt|bms|pmic|fg)[-_]?soc", re.I)


def is_temperature_zone(zone_type: str) -> bool:
    """Whether a thermal zone of this type measures a temperature: ``battery`` zones on many phones report charge,
    ``ibat``/``vbat`` current and voltage, ``*-lvl*`` BCL levels, ``soc`` the state of charge (``soc_thermal`` is a
    temperature)."""
    return not _NOT_TEMPERATURE_ZONE.search(zone_type.strip())


def parse_thermal(text: str) -> list[dict]:
    """``zone|type|temp`` lines → [{"zone", "type", "temp_c"}]: zones without a readable temperature, or whose type
    says they measure something else, are skipped."""
    zones = []
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not is_temperature_zone(parts[1]):
            continue
        temp = _celsius(parts[2].strip())
        if temp is not None:
            zones.append({"zone": parts[0].strip(), "type": parts[1].strip(), "temp_c": temp})
    return zones


_HAL_TEMP = re.compile(r"Temperature\{mValue=(-?[\d.]+|NaN),\s*mType=(-?\d+),\s*mName=([^,]*),\s*mStatus=(\d+)")


def parse_thermalservice(text: str) -> dict | None:
    """``dumpsys thermalservice`` (Android 10+) → {"status", "status_name", "temperatures": [{name, type, temp_c,
    status}]}, or None when the service is missing. Temperatures come from "Current temperatures from HAL" (else
    the cached ones); BCL voltage/current/percentage entries are dropped."""
    m = re.search(r"^\s*Thermal Status:\s*(\d+)", text, re.M)
    if m is None and "Temperature{" not in text:
        return None
    status = int(m.group(1)) if m else None
    current = text.split("Current temperatures from HAL:", 1)
    section = current[1].split("Current cooling devices", 1)[0] if len(current) == 2 else text
    temps = []
    for t in _HAL_TEMP.finditer(section):
        kind = int(t.group(2))
        if kind in NOT_TEMPERATURE_TYPES or t.group(1) == "NaN":
            continue
        temps.append({"name": t.group(3).strip(), "type": TEMPERATURE_TYPES.get(kind, str(kind)),
                      "temp_c": float(t.group(1)), "status": int(t.group(4))})
    return {"status": status, "status_name": THROTTLING_STATUS.get(status) if status is not None else None,
            "temperatures": temps}


def thermal_snapshot(zones_text: str, thermalservice_text: str) -> dict:
    """One reading of how warm the device is: {"source", "max_temp_c", "status", "status_name", "readings"}.

    The platform's typed temperatures (``dumpsys thermalservice``, Android 10+) are preferred; else thermal zones
    whose type says temperature. ``max_temp_c`` is None when nothing could be read, and callers must say so."""
    service = parse_thermalservice(thermalservice_text)
    if service and service["temperatures"]:
        readings = service["temperatures"]
        source = "thermalservice"
    else:
        readings = parse_thermal(zones_text)
        source = "thermal_zones" if readings else None
    temps = [r["temp_c"] for r in readings]
    return {"source": source, "max_temp_c": max(temps) if temps else None,
            "status": service["status"] if service else None,
            "status_name": service["status_name"] if service else None, "readings": readings}


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


def cpu_clusters(cpufreq: dict[int, dict], possible: list[int] | None = None) -> list[dict]:
    """Clusters (cpufreq policies) as [{"cpus", "max_khz"}], slowest first.

    A cluster is a set of cores sharing ``related_cpus`` (which lists offline cores too, so the big cluster is known
    even when it is hotplugged off); without that file, cores are grouped by ``cpuinfo_max_freq``. Cores with no
    readable cpufreq that no policy names form a cluster with ``max_khz`` None.
    """
    clusters: dict[tuple[int, ...], int | None] = {}
    named: set[int] = set()
    for cpu, files in sorted(cpufreq.items()):
        top = files.get("cpuinfo_max_freq")
        top = top if isinstance(top, int) else None
        related = files.get("related_cpus")
        if isinstance(related, int):
            related = str(related)
        members = tuple(int(c) for c in related.split()) if isinstance(related, str) and related.strip() else ()
        if cpu not in members and members:
            members = tuple(sorted({*members, cpu}))
        if not members:
            continue
        if top is not None or members not in clusters:
            clusters[members] = max(filter(None, [clusters.get(members), top]), default=None)
        named.update(members)
    by_freq: dict[int | None, list[int]] = {}
    for cpu, files in sorted(cpufreq.items()):
        if cpu in named:
            continue
        top = files.get("cpuinfo_max_freq")
        by_freq.setdefault(top if isinstance(top, int) else None, []).append(cpu)
    for top, cpus in by_freq.items():
        clusters[tuple(cpus)] = top
    unknown = sorted(set(possible or []) - named - {c for cpus in by_freq.values() for c in cpus})
    if unknown:
        clusters[tuple(unknown)] = None
    out = [{"cpus": list(cpus), "max_khz": top} for cpus, top in clusters.items()]
    return sorted(out, key=lambda c: (c["max_khz"] is None, c["max_khz"] or 0, c["cpus"]))


CORE_POLICIES = ("big", "prime", "all")


def select_cores(policy: str | None, cpufreq: dict[int, dict], online: list[int] | None = None,
                 possible: list[int] | None = None) -> dict:
    """Cores to pin to: {"policy", "mask", "cores", "clusters", "offline", "note"}.

    ``big`` (default): every cluster but the slowest (big + prime: 4 cores on 4+4, 1+3+4 and 2+2+4 SoCs);
    ``prime``: the fastest cluster alone (1 core on 1+3+4); ``all``: every online core; a hex mask: those cores.
    Chosen cores that are offline are left out and named in ``note`` (pinning to them would fail); if every chosen
    core is offline, the fastest online cluster is used instead, and the note says so.
    """
    policy = (policy or "big").strip().lower()
    clusters = cpu_clusters(cpufreq, possible)
    known = [c for c in clusters if c["max_khz"] is not None]
    all_cpus = sorted({cpu for c in clusters for cpu in c["cpus"]} | set(online or []))
    online_set = set(online) if online else set(all_cpus)
    if policy == "all":
        chosen = all_cpus
    elif policy == "prime":
        chosen = known[-1]["cpus"] if known else all_cpus
    elif policy == "big":
        # Cores whose cluster is unknown (offline, no cpufreq) numbered above the slowest cluster are big cores on
        # every SoC we know: count them in, so they are reported offline instead of silently swapped for little ones.
        above = sorted({cpu for c in clusters if c["max_khz"] is None for cpu in c["cpus"]
                        if known and cpu > max(known[0]["cpus"])})
        if len(known) > 1:
            chosen = sorted({cpu for c in known[1:] for cpu in c["cpus"]} | set(above))
        elif above:
            chosen = above
        else:
            chosen = known[0]["cpus"] if known else all_cpus
    else:
        try:
            value = int(policy, 16)
        except ValueError:
            raise ValueError(f"cores must be big, prime, all or a hex CPU mask like f0, got {policy!r}") from None
        if value <= 0:
            raise ValueError(f"cores mask must name at least one core, got {policy!r}")
        chosen = cores_of(policy)
    offline = [c for c in chosen if c not in online_set]
    cores = [c for c in chosen if c in online_set]
    note = None
    if offline and cores:
        note = (f"cores {','.join(map(str, offline))} of the '{policy}' choice were offline when the device was read "
                f"(hotplugged by the power or thermal manager); pinned to {','.join(map(str, cores))} only")
    elif offline:
        fallback = next((c for c in reversed(known) if any(cpu in online_set for cpu in c["cpus"])), None)
        cores = [cpu for cpu in fallback["cpus"] if cpu in online_set] if fallback else sorted(online_set)
        note = (f"every core of the '{policy}' choice ({','.join(map(str, offline))}) was offline when the device was "
                f"read; pinned to the fastest online cores {','.join(map(str, cores))} instead")
    return {"policy": policy, "mask": mask_of(cores) if cores else "", "cores": cores, "clusters": clusters,
            "offline": offline, "note": note}


def big_core_mask(cpufreq: dict[int, dict], online: list[int] | None = None) -> tuple[str, list[int]]:
    """Hex taskset mask and numbers of the big cores (``select_cores("big")``)."""
    choice = select_cores("big", cpufreq, online)
    return choice["mask"], choice["cores"]


def mask_of(cores: list[int]) -> str:
    return format(sum(1 << c for c in cores), "x")


def cores_of(mask: str) -> list[int]:
    value = int(mask, 16)
    return [i for i in range(value.bit_length()) if value >> i & 1]


def parse_shell_cpuset(text: str) -> dict:
    """The shell's cpuset cgroup (``/proc/self/cpuset``) and the cores it may run on (``Cpus_allowed_list``)."""
    out: dict = {"cgroup": None, "cpus_allowed": None}
    m = re.search(r"^cpuset (.*)$", text, re.M)
    if m and m.group(1).strip():
        out["cgroup"] = m.group(1).strip()
    m = re.search(r"^Cpus_allowed_list:\s*(\S+)", text, re.M | re.I)
    if m:
        out["cpus_allowed"] = parse_cpu_list(m.group(1))
    return out


def max_temperature(thermal: list[dict], battery: dict | None = None) -> float | None:
    temps = [z["temp_c"] for z in thermal]
    if battery and battery.get("temp_c") is not None:
        temps.append(battery["temp_c"])
    return max(temps) if temps else None


def read_thermal(conn) -> dict:
    """A ``thermal_snapshot`` read now (one shell round trip)."""
    out, _ = conn.run(THERMAL_SCRIPT)
    zones, _, service = out.partition(_SEP + "\n")
    return thermal_snapshot(zones, service)


def collect_device_info(conn) -> dict:
    """Everything the record needs, as a plain JSON-serializable dict."""
    out, _rc = conn.run(INFO_SCRIPT)
    sections = out.replace("\r\n", "\n").split(_SEP + "\n")
    sections += [""] * (N_SECTIONS - len(sections))
    props = parse_getprop(sections[0])
    cpuinfo = parse_cpuinfo(sections[1])
    online = parse_cpu_list(sections[2]) if sections[2].strip() else []
    cpufreq = parse_cpufreq(sections[3])
    thermal = thermal_snapshot(sections[4], sections[8])
    battery = parse_battery(sections[5])
    machine = sections[6].strip() or None
    cpuset = parse_shell_cpuset(sections[7])
    names = {c["cpu"]: c["name"] for c in cpuinfo["cores"]}
    possible = sorted(set(cpufreq) | set(names) | set(online))
    big = select_cores("big", cpufreq, online or None, possible)
    cpus = [{"cpu": cpu, "core": names.get(cpu), "online": cpu in online, **{k: v for k, v in cpufreq[cpu].items()}}
            for cpu in sorted(cpufreq)]
    for cpu in sorted(set(names) - set(cpufreq)):
        cpus.append({"cpu": cpu, "core": names[cpu], "online": cpu in online})
    info = {
        "serial": conn.serial,
        **{key: props.get(prop) for key, prop in PROP_KEYS.items()},
        "abilist": [a for a in props.get("ro.product.cpu.abilist", "").split(",") if a]
        or [a for a in [props.get("ro.product.cpu.abi")] if a],
        "machine": machine,
        "cpu_hardware": cpuinfo["hardware"],
        "online_cpus": online,
        "cpus": cpus,
        "clusters": big["clusters"],
        "big_cores": big["cores"],
        "big_core_mask": big["mask"],
        "shell_cpuset": cpuset,
        "thermal_source": thermal["source"],
        "thermal_status": thermal["status"],
        "thermal_zones": thermal["readings"] if thermal["source"] == "thermal_zones" else parse_thermal(sections[4]),
        "temperatures": thermal["readings"],
        "max_temp_c": thermal["max_temp_c"],
        "battery": battery,
        "collected_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    log.debug("device info: %s %s", info["manufacturer"], info["model"])
    return info
