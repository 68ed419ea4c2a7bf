"""The benchmark protocol on one device: push once, cool down, run pinned and detached, poll, pull raw samples.

Per run of ``run_benchmark``:

1. connect (``~/.android/adbkey``), record the device (``device_info``), check the runner's ABI (primary ABI and
   ``uname -m``);
2. push the runner's files and the models into ``/data/local/tmp/edgeprune/``, skipping files whose sha256 on the
   device already matches (so ``keep=True`` makes the next run push nothing);
3. pin by cluster policy (``cores``: big, prime, all or a hex mask; offline cores noted), threads = pinned cores;
4. for each block (each its own runner process; dense and slim alternate A B A B when a baseline is given) wait
   until the temperature is back near the idle baseline (at most ``cooldown_seconds``; the outcome is recorded, "not
   checked" when nothing could be read), start the runner detached as a statement of its own with every stream
   redirected and SIGHUP ignored, require its pid file within seconds, poll its exit code, liveness, CPU time and
   output size while sampling the pinned cores' clocks (a runner without progress is stopped early), pull the output
   and parse it;
5. a block interrupted by a lost connection or a link timeout is retried once after reconnecting; a device that does
   not come back is reported gone; after every block everything measured so far is written atomically to
   ``partial_path``, whose name every error message carries;
6. delete the work dir unless ``keep=True``.

Statistics (mean, percentiles, speedup) are the caller's job; this returns raw samples and the device record.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import shlex
import tempfile
import time

from android_bench import __version__
from android_bench._io import sha256_file, write_json_atomic
from android_bench.device_info import collect_device_info, read_thermal, select_cores
from android_bench.errors import (
    AbiMismatchError,
    AndroidBenchError,
    BenchTimeoutError,
    DeviceCommandError,
    DeviceDisconnectedError,
    DeviceGoneError,
    RunnerCrashError,
    RunnerNotStartedError,
    RunnerTimeoutError,
)
from android_bench.runners.base import Runner, RunSpec, get_runner
from android_bench.transport import AdbConnection, normalize_newlines

log = logging.getLogger(__name__)

WORKDIR = "/data/local/tmp/edgeprune"
POLL_INTERVAL_S = 0.25
DEFAULT_BLOCK_TIMEOUT_S = 900.0


def default_rounds(runs: int, paired: bool = True) -> int:
    """Blocks per model when not given: ~100 runs each, between 2 (1 without a baseline) and 10, so 1,000 runs make
    10 alternating blocks per model, enough for a block bootstrap of the speedup."""
    return max(2 if paired else 1, min(10, runs // 100))


def split_runs(runs: int, rounds: int) -> list[int]:
    """``runs`` split over ``rounds`` blocks (earlier blocks take the remainder): 1000 over 3 → [334, 333, 333]."""
    base, extra = divmod(runs, rounds)
    return [base + (1 if i < extra else 0) for i in range(rounds) if base + (1 if i < extra else 0) > 0]


def schedule(n_entries: int, rounds: int) -> list[tuple[int, int]]:
    """Execution order as (round, entry index): every round runs every entry in turn, so A B A B for two entries."""
    return [(r, i) for r in range(rounds) for i in range(n_entries)]


def is_throttled(freq_samples: list[dict], max_khz: dict[int, int], ratio: float) -> bool:
    """Did a pinned core run below ``ratio`` × its ``cpuinfo_max_freq`` while it should have been at full speed?

    Two signs count: the thermal governor capped ``scaling_max_freq`` below that line, or ``scaling_cur_freq`` fell
    below it *after* the core had ramped up. Samples before the first ramp-up are ignored: a core idles at a low
    clock while the runner starts, which is not throttling.
    """
    ramped: set[int] = set()
    for sample in freq_samples:
        for cpu, cap in sample.get("max_khz", {}).items():
            top = max_khz.get(int(cpu))
            if top and cap is not None and cap < ratio * top:
                return True
        for cpu, khz in sample["khz"].items():
            cpu = int(cpu)
            top = max_khz.get(cpu)
            if not top or khz is None:
                continue
            if khz >= ratio * top:
                ramped.add(cpu)
            elif cpu in ramped:
                return True
    return False


def _kill_tree(pidf: str) -> str:
    """Shell that kills the process whose pid is in ``pidf`` and all its descendants (runners may fork)."""
    return (f"k() {{ for c in $(pgrep -P $1 2>/dev/null); do k $c; done; kill -9 $1 2>/dev/null; }}; "
            f"p=$(cat {shlex.quote(pidf)} 2>/dev/null); [ -n \"$p\" ] && k $p; true")


def _tail(text: str, n: int = 8) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) if lines else "(no output)"


@contextlib.contextmanager
def _progress(enabled: bool):
    """A rich progress display on stderr (or a no-op stand-in), so the user sees the phone working."""
    if not enabled:
        class _Null:
            def add_task(self, *a, **k):
                return 0

            def update(self, *a, **k):
                pass

            def advance(self, *a, **k):
                pass

        yield _Null()
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as prog:
        yield prog


class _Session:
    """State of one benchmark on one device (connection, pushed files, results so far)."""

    def __init__(self, conn: AdbConnection, runner: Runner, workdir: str, partial_path: pathlib.Path, prog):
        self.conn = conn
        self.runner = runner
        self.workdir = workdir.rstrip("/")
        self.partial_path = partial_path
        self.prog = prog
        self.pushed: list[str] = []
        self.record: dict = {}
        self.running_pidf: str | None = None  # pid file of the block in flight, so an abort can stop it

    def save(self, partial: bool, error: str | None = None) -> None:
        self.record["partial"] = partial
        self.record["error"] = error
        write_json_atomic(self.partial_path, self.record)

    # -- pushing ------------------------------------------------------------------------------------------------
    def remote_hashes(self, remotes: list[str]) -> list[str]:
        """sha256 of each device file ('' if missing); falls back to the ``.sha256`` file stored beside it."""
        if not remotes:
            return []
        quoted = " ".join(shlex.quote(r) for r in remotes)
        out, _ = self.conn.run(
            f'for f in {quoted}; do h=$(sha256sum "$f" 2>/dev/null || cat "$f.sha256" 2>/dev/null); '
            f'echo "H:${{h%% *}}"; done'
        )
        hashes = [ln[2:].strip() for ln in out.splitlines() if ln.startswith("H:")]
        if len(hashes) != len(remotes):
            raise DeviceCommandError(f"could not read file hashes on the device (got: {_tail(out)})")
        return hashes

    def sync_files(self, files: list[tuple[pathlib.Path, str]]) -> None:
        """Push ``(local, remote)`` pairs whose hashes differ; record the hash beside each pushed file."""
        if not files:
            return
        local_hashes = [sha256_file(local) for local, _ in files]
        dirs = sorted({os.path.dirname(remote) for _, remote in files})
        _, rc = self.conn.run("mkdir -p " + " ".join(shlex.quote(d) for d in dirs))
        if rc != 0:
            raise DeviceCommandError(f"cannot create {self.workdir} on the device (mkdir exit code {rc})")
        todo = [(l, r, h) for (l, r), h, rh in zip(files, local_hashes, self.remote_hashes([r for _, r in files]))
                if h != rh]
        if not todo:
            log.info("all %d files already on the device", len(files))
            return
        total = sum(os.path.getsize(l) for l, _, _ in todo)
        task = self.prog.add_task("pushing", total=total)
        done_before = 0
        for local, remote, _ in todo:
            self.conn.push(local, remote, progress=lambda n, _t, b=done_before: self.prog.update(task, completed=b + n))
            done_before += os.path.getsize(local)
            self.pushed.append(remote)
        self.prog.update(task, completed=total)
        stamp = "; ".join(f"echo {h} > {shlex.quote(r + '.sha256')}" for _, r, h in todo)
        self.conn.run(stamp)

    # -- running ------------------------------------------------------------------------------------------------
    def cooldown(self, idle_c: float | None, limit_s: float, tolerance_c: float) -> dict:
        """Wait until the hottest temperature is within ``tolerance_c`` of the idle baseline, at most ``limit_s``.

        Returns the outcome for the block record: ``cooldown_reached`` is True, False (still hot after ``limit_s``)
        or None (no temperature could be read, so nothing was checked: never reported as success)."""
        start = time.monotonic()
        snap = read_thermal(self.conn)
        temp = snap["max_temp_c"]

        def outcome(reached, note=None):
            return {"cooldown_s": round(time.monotonic() - start, 3), "cooldown_reached": reached,
                    "start_temp_c": temp, "thermal_status": snap["status"], "cooldown_note": note}

        if idle_c is None or temp is None:
            note = "no temperature could be read on the device: cool-down was not checked"
            log.warning(note)
            return outcome(None, note)
        while temp > idle_c + tolerance_c:
            if time.monotonic() - start >= limit_s:
                note = f"still {temp:.1f} °C after {limit_s:.0f} s of cool-down (idle {idle_c:.1f} °C); ran anyway"
                log.warning(note)
                return outcome(False, note)
            time.sleep(min(1.0, max(0.1, limit_s / 20)))
            snap = read_thermal(self.conn)
            if snap["max_temp_c"] is None:
                note = "the temperature could no longer be read during cool-down: not checked"
                log.warning(note)
                return outcome(None, note)
            temp = snap["max_temp_c"]
        return outcome(True)

    def launch_command(self, spec: RunSpec, tag: str) -> str:
        """The shell that starts the runner detached. Preparation runs first, then the start is its own statement
        with every stream redirected and SIGHUP ignored: a PTY session's hang-up on exit can neither kill it nor be
        kept open by it (backgrounding a whole ``a && b && nohup c &`` chain did both, depending on the daemon)."""
        q = shlex.quote
        out_dir = f"{self.workdir}/out"
        out, rcf, pidf, logf = (f"{out_dir}/{tag}.{ext}" for ext in ("txt", "rc", "pid", "log"))
        # The pid file holds the runner's own pid; the exit code is written when it ends.
        inner = (f"( {self.runner.command(spec)} ) > {q(out)} 2>&1 < /dev/null & echo $! > {q(pidf)}; "
                 f"wait $!; echo $? > {q(rcf)}")
        return (f"mkdir -p {q(out_dir)} && cd {q(self.workdir)} && rm -f {q(out)} {q(rcf)} {q(pidf)} {q(logf)} "
                f"|| exit $?\n"
                f"trap '' HUP\n"
                f"nohup sh -c {q(inner)} > {q(logf)} 2>&1 < /dev/null &\n")

    def poll_command(self, tag: str, pinned: list[int]) -> str:
        """Exit code (once there), runner pid, whether it lives, CPU ticks of it and its children, output size and
        the pinned cores' clocks, in one round trip."""
        out_dir = f"{self.workdir}/out"
        out, rcf, pidf = (f"{out_dir}/{tag}.{ext}" for ext in ("txt", "rc", "pid"))
        freq = " ".join(f"{c}:$(cat {d}/scaling_cur_freq 2>/dev/null):$(cat {d}/scaling_max_freq 2>/dev/null)"
                        for c in pinned for d in [f"/sys/devices/system/cpu/cpu{c}/cpufreq"])
        # utime + stime are fields 14 and 15 of /proc/PID/stat; after "pid (comm) " they are the 12th and 13th.
        ticks = ('t() { s=$(cat /proc/$1/stat 2>/dev/null) || { echo 0; return; }; set -- $1 ${s##*) }; '
                 'n=$(( ${13} + ${14} )); for k in $(pgrep -P $1 2>/dev/null); do n=$(( n + $(t $k) )); done; '
                 'echo $n; }')
        return (f"{ticks}; r=$(cat {rcf} 2>/dev/null); p=$(cat {pidf} 2>/dev/null); a=0; c=0; "
                f'if [ -n "$p" ] && [ -d /proc/$p ]; then a=1; c=$(t $p); fi; '
                f"z=$(wc -c < {out} 2>/dev/null); "
                f'echo "__L rc=$r pid=$p alive=$a cpu=$c size=$(echo $z)"; echo __F {freq}')

    def run_block(self, spec: RunSpec, tag: str, pinned: list[int], timeout_s: float, status, *,
                  start_timeout_s: float = 10.0, stall_s: float = 60.0) -> tuple[list[float], list[dict]]:
        """Start the runner detached, poll exit code + liveness + frequencies, pull and parse its output.

        The runner must write its pid file within ``start_timeout_s``; a runner that neither uses CPU time nor
        writes output for ``stall_s`` is stopped; one that vanished without an exit code is reported as such."""
        out_dir = f"{self.workdir}/out"
        out, pidf, logf = (f"{out_dir}/{tag}.{ext}" for ext in ("txt", "pid", "log"))
        # Never retried blindly: a second launch would run the model twice at once.
        self.running_pidf = pidf
        launch_out, rc = self.conn.run(self.launch_command(spec, tag), retry=False,
                                       what=f"starting the runner ({tag})")
        if rc != 0:
            raise DeviceCommandError(f"could not prepare {self.workdir} for the runner on the device (exit code {rc})")
        poll = self.poll_command(tag, pinned)
        start = time.monotonic()
        last_progress, progress_mark, dead_since = start, None, None
        samples: list[dict] = []
        while True:
            text, _ = self.conn.run(poll, what=f"polling the runner ({tag})")
            head, _, freqs = text.partition("__F")
            fields = dict(tok.partition("=")[::2] for tok in head.split() if "=" in tok)
            khz, cap = {}, {}
            for tok in freqs.split():
                cpu, cur, top = (tok.split(":") + ["", ""])[:3]
                if cpu.isdigit():
                    khz[int(cpu)] = int(cur) if cur.isdigit() else None
                    cap[int(cpu)] = int(top) if top.isdigit() else None
            now = time.monotonic()
            elapsed = now - start
            if khz:
                samples.append({"t": round(elapsed, 3), "khz": khz, "max_khz": cap})
                status(khz)
            code = fields.get("rc", "")
            if code.lstrip("-").isdigit():
                break
            if not fields.get("pid"):
                if elapsed > start_timeout_s:
                    self.running_pidf = None
                    raise RunnerNotStartedError(
                        f"{tag}: the runner never started on the device (no pid file after {start_timeout_s:.0f} s): "
                        f"{_tail(launch_out, 2) + ' | ' if launch_out.strip() else ''}{self._device_text(logf, out)}")
            elif fields.get("alive") == "0":
                # Gone without an exit code: give the waiting shell a moment to write it, then say what happened.
                dead_since = dead_since or now
                if now - dead_since > 3.0:
                    self.running_pidf = None
                    raise RunnerCrashError(
                        f"{tag}: runner {self.runner.name} vanished without an exit code (killed by the system, or "
                        f"its session was hung up): {self._device_text(logf, out)}")
            else:
                mark = (fields.get("cpu"), fields.get("size"))
                if mark != progress_mark:
                    progress_mark, last_progress = mark, now
                elif now - last_progress > stall_s:
                    said = self._device_text(logf, out)
                    self.conn.run(_kill_tree(pidf))
                    self.running_pidf = None
                    raise RunnerTimeoutError(
                        f"{tag}: the runner made no progress (no CPU time, no output) for {stall_s:.0f} s and was "
                        f"stopped after {elapsed:.0f} s: it hangs on the device (its output: {said})")
            if elapsed > timeout_s:
                self.conn.run(_kill_tree(pidf))
                self.running_pidf = None
                raise RunnerTimeoutError(
                    f"{tag}: the runner did not finish within {timeout_s:.0f} s and was stopped: lower --runs or "
                    f"raise the timeout"
                )
            time.sleep(POLL_INTERVAL_S)
        self.running_pidf = None
        with tempfile.TemporaryDirectory(prefix="android_bench-") as tmp:
            local = pathlib.Path(tmp) / "out.txt"
            self.conn.pull(out, local)
            output = normalize_newlines(local.read_text(errors="replace"))
        if int(code) != 0:
            raise RunnerCrashError(f"runner {self.runner.name} exited with code {code}: {_tail(output, 3)}")
        return self.runner.parse(output), samples

    def thermal_after(self) -> dict:
        """Temperatures and the platform's throttling status right after a block (empty if unreadable)."""
        with contextlib.suppress(AndroidBenchError):
            return read_thermal(self.conn)
        return {}

    def _device_text(self, *files: str) -> str:
        """What the device said in the launch log / runner output (one line), for error messages."""
        with contextlib.suppress(AndroidBenchError):
            text, _ = self.conn.run("cat " + " ".join(shlex.quote(f) for f in files) + " 2>&1")
            return _tail(text, 4)
        return "(could not read the device's output)"

    def kill_stale(self, tag: str) -> None:
        pidf = f"{self.workdir}/out/{tag}.pid"
        self.conn.run(_kill_tree(pidf))


def run_benchmark(
    models: list[pathlib.Path],
    serial: str | None,
    runner: str | Runner = "python-ort",
    runs: int = 1000,
    warmup: int = 50,
    threads: int | None = None,
    cores: str | None = None,
    cooldown_seconds: float = 60.0,
    keep: bool = False,
    partial_path: pathlib.Path | None = None,
    progress: bool = True,
    *,
    baseline: pathlib.Path | None = None,
    rounds: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    timeout_s: float | None = None,
    workdir: str = WORKDIR,
    key_path: pathlib.Path | None = None,
    throttle_ratio: float = 0.9,
    temp_tolerance_c: float = 2.0,
    idle_temp_c: float | None = None,
    auth_timeout_s: float = 30.0,
    start_timeout_s: float = 10.0,
    stall_s: float = 60.0,
    reconnect_wait_s: float = 10.0,
    link_timeout_s: float = 10.0,
) -> dict:
    """Time every model (and ``baseline``) ``runs`` times on the device ``serial``; return device record + raw samples.

    ``rounds`` splits ``runs`` into that many blocks per model, each its own runner process, interleaved baseline,
    model, baseline, model … so slow drifts (heat, background load) hit both alike and the statistics can resample
    whole blocks; by default ``default_rounds(runs)`` (10 blocks for 1,000 runs). Raises a subclass of
    ``AndroidBenchError``; its ``partial_path`` holds everything measured before the failure.

    ``cores``: ``big`` (default: every cluster but the slowest), ``prime`` (the fastest cluster), ``all``, or a
    hex mask; threads default to the number of pinned cores.

    ``idle_temp_c`` is the cool-down target (default: the hottest thermal zone when the run starts);
    ``auth_timeout_s`` is how long the user has to tap "Allow" on a phone that does not know this computer yet;
    ``start_timeout_s`` how long the runner's pid file may take to appear; ``stall_s`` how long a runner may go
    without CPU time or output before it counts as hung; ``reconnect_wait_s`` how long a device that dropped off
    (Wi-Fi, restarted adbd) may take to come back before it counts as gone; ``link_timeout_s`` how long one ADB
    message may take before the link counts as dead (then reconnect and retry, as after a reset).
    """
    models = [pathlib.Path(m) for m in models]
    entries = ([(pathlib.Path(baseline), "baseline")] if baseline is not None else []) + [(m, "model") for m in models]
    if not entries:
        raise ValueError("give at least one model")
    for path, _ in entries:
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
    if runs < 1 or warmup < 0:
        raise ValueError("runs must be ≥ 1 and warmup ≥ 0")
    rounds = rounds or default_rounds(runs, baseline is not None)
    blocks = split_runs(runs, rounds)
    runner_obj = get_runner(runner) if isinstance(runner, str) else runner
    timeout_s = timeout_s or DEFAULT_BLOCK_TIMEOUT_S
    auto_partial = partial_path is None
    partial_path = pathlib.Path(partial_path) if partial_path is not None else pathlib.Path(
        tempfile.gettempdir()) / f"android_bench-partial-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"

    conn = AdbConnection(serial, key_path=key_path, auth_timeout_s=auth_timeout_s, reconnect_wait_s=reconnect_wait_s,
                         transport_timeout_s=link_timeout_s, read_timeout_s=link_timeout_s)
    with _progress(progress) as prog:
        session = _Session(conn, runner_obj, workdir, partial_path, prog)
        try:
            result = _run(session, entries, blocks, runs, warmup, threads, cores, cooldown_seconds, input_shape,
                          timeout_s, throttle_ratio, temp_tolerance_c, idle_temp_c,
                          {"start_timeout_s": start_timeout_s, "stall_s": stall_s})
        except AndroidBenchError as exc:
            if session.record:
                session.save(partial=True, error=str(exc))
                exc.partial_path = partial_path
            raise
        except BaseException as exc:  # Ctrl-C included: keep what was measured, say where
            if session.record:
                session.save(partial=True, error=f"{exc.__class__.__name__}: {exc}")
                log.warning("benchmark stopped; results measured so far saved to %s", partial_path)
            raise
        finally:
            if session.running_pidf is not None:  # aborted mid-block (error or Ctrl-C): stop the runner
                with contextlib.suppress(Exception):
                    conn.run(_kill_tree(session.running_pidf), timeout_s=30)
            if not keep and session.record:
                with contextlib.suppress(Exception):
                    conn.run(f"rm -rf {shlex.quote(session.workdir)}", timeout_s=30)
            conn.close()
    if auto_partial:
        partial_path.unlink(missing_ok=True)
    else:
        session.save(partial=False)
    return result


def check_abi(runner: Runner, info: dict) -> None:
    """Refuse a runner built for another ABI: a 64-bit runner needs it as the *primary* ABI (a 32-bit userland on a
    64-bit kernel lists no arm64-v8a) and a kernel that runs such code (``uname -m``)."""
    abi = runner.abi
    if not abi:
        return
    primary = info.get("abi") or (info["abilist"][0] if info["abilist"] else None)
    machine = info.get("machine")
    machines = ABI_MACHINES.get(abi)
    problem = None
    if abi in ("arm64-v8a", "x86_64") and primary is not None and primary != abi:
        problem = f"its primary ABI is {primary}"
    elif abi not in info["abilist"] and info["abilist"]:
        problem = f"it supports only {', '.join(info['abilist'])}"
    elif not info["abilist"] and primary is None:
        problem = "it reports no ABI"
    if problem is None and machine and machines and machine not in machines:
        problem = f"its kernel runs {machine} code (uname -m)"
    if problem:
        raise AbiMismatchError(
            f"runner {runner.name} needs {abi} but {info.get('model') or 'the device'}: {problem} "
            f"(ABIs: {', '.join(info['abilist']) or 'unknown'}): use a runner built for this device")


ABI_MACHINES = {"arm64-v8a": {"aarch64", "arm64"}, "armeabi-v7a": {"armv7l", "armv8l", "aarch64", "armv7"},
                "x86_64": {"x86_64"}, "x86": {"i686", "i386", "x86_64"}}


def _run(s: _Session, entries, blocks, runs, warmup, threads, cores, cooldown_seconds, input_shape, timeout_s,
         throttle_ratio, temp_tolerance_c, idle_temp_c, block_options) -> dict:
    task = s.prog.add_task("connecting", total=len(blocks) * len(entries))
    s.conn.connect()
    info = collect_device_info(s.conn)
    runner = s.runner
    s.record = {"android_bench_version": __version__, "device": info, "runner": runner.name, "results": [],
                "order": [], "pushed": s.pushed, "partial": True, "error": None, "notes": []}
    check_abi(runner, info)
    online = info["online_cpus"] or None
    possible = sorted({c["cpu"] for c in info["cpus"]})
    cpufreq = {c["cpu"]: c for c in info["cpus"] if "cpuinfo_max_freq" in c or "related_cpus" in c}
    try:
        choice = select_cores(cores, cpufreq, online, possible)
    except ValueError as exc:
        raise AndroidBenchError(str(exc)) from None
    mask = choice["mask"] or None
    pinned = choice["cores"] or info["online_cpus"]
    if choice["note"]:
        log.warning(choice["note"])
        s.record["notes"].append(choice["note"])
    allowed = (info.get("shell_cpuset") or {}).get("cpus_allowed")
    if allowed and pinned and not set(pinned) <= set(allowed):
        note = (f"the shell's cpuset ({info['shell_cpuset'].get('cgroup') or '?'}) allows cores "
                f"{','.join(map(str, allowed))} only; pinning to {','.join(map(str, pinned))} is limited by it")
        log.warning(note)
        s.record["notes"].append(note)
    nthreads = threads or len(pinned) or 1
    max_khz = {c["cpu"]: c.get("cpuinfo_max_freq") for c in info["cpus"] if isinstance(c.get("cpuinfo_max_freq"), int)}
    idle_c = idle_temp_c if idle_temp_c is not None else info.get("max_temp_c")
    if idle_c is None:
        note = "no temperature could be read on the device: cool-down between blocks is not checked"
        log.warning(note)
        s.record["notes"].append(note)
    s.record.update({"cores": mask, "cores_policy": choice["policy"], "pinned_cores": pinned,
                     "offline_cores": choice["offline"], "threads": nthreads, "idle_temp_c": idle_c,
                     "thermal_source": info.get("thermal_source"), "shell_cpuset": info.get("shell_cpuset")})

    s.prog.update(task, description="pushing runner and models")
    files = [(local, f"{s.workdir}/{rel}") for local, rel in runner.files()]
    remote_models = []
    for path, _ in entries:
        remote = f"{s.workdir}/models/{sha256_file(path)[:16]}{path.suffix}"
        remote_models.append(remote)
        if all(r != remote for _, r in files):
            files.append((path, remote))
    s.sync_files(files)

    results = []
    for (path, role), remote in zip(entries, remote_models):
        results.append({"model": path.name, "path": str(path), "role": role, "remote": remote,
                        "runtime": runner.name, "runs": 0, "runs_requested": runs, "warmup": warmup,
                        "threads": nthreads, "cores": mask, "samples_ms": [], "block_samples_ms": [],
                        "throttled": False, "freq_samples": [], "blocks": [], "retried": False, "complete": False})
    s.record["results"] = results
    s.record["throttled"] = False
    s.record["cooldown"] = {"reached": 0, "not_reached": 0, "unchecked": 0}

    for n, (rnd, idx) in enumerate(schedule(len(entries), len(blocks))):
        res = results[idx]
        label = f"{res['model']} ({res['role']}, block {rnd + 1}/{len(blocks)})"
        s.prog.update(task, description=f"cooling down before {label}")
        cool = s.cooldown(idle_c, cooldown_seconds, temp_tolerance_c)
        spec = RunSpec(model_remote=res["remote"], runs=blocks[rnd], warmup=warmup, threads=nthreads, cores=mask,
                       workdir=s.workdir, input_shape=tuple(input_shape) if input_shape else None)

        def status(khz, label=label):
            mhz = "/".join(str((v or 0) // 1000) for v in khz.values())
            s.prog.update(task, description=f"running {label} · {mhz} MHz")

        started = time.time()
        retried = False
        for attempt in range(2):
            tag = f"b{n}_a{attempt}"
            try:
                samples, freq = s.run_block(spec, tag, pinned, timeout_s, status, **block_options)
                break
            except (RunnerTimeoutError, DeviceGoneError):
                raise
            except (DeviceDisconnectedError, BenchTimeoutError) as exc:
                # A reset and a link timeout (a Wi-Fi drop) are the same to us: reconnect, rerun the block once.
                if attempt == 1:
                    raise exc.__class__(
                        f"lost the connection twice while running {label}: check the cable / Wi-Fi and rerun "
                        f"({exc})") from exc
                log.warning("connection lost during %s; reconnecting and running the block again", label)
                retried = True
                time.sleep(0.5)
                s.kill_stale(tag)
        throttled = is_throttled(freq, max_khz, throttle_ratio)
        after = s.thermal_after()
        if after.get("status") not in (None, 0):
            throttled = True  # the platform itself says it throttles (Android 10+ thermal status)
        res["samples_ms"].extend(samples)
        res["block_samples_ms"].append(list(samples))
        res["runs"] = len(res["samples_ms"])
        res["freq_samples"].extend({"block": n, **f} for f in freq)
        res["throttled"] = res["throttled"] or throttled
        s.record["throttled"] = s.record["throttled"] or throttled
        key = {True: "reached", False: "not_reached", None: "unchecked"}[cool["cooldown_reached"]]
        s.record["cooldown"][key] += 1
        res["retried"] = res["retried"] or retried
        res["blocks"].append({"round": rnd, "runs": len(samples), "started_at": round(started, 3),
                              "duration_s": round(time.time() - started, 3), "throttled": throttled,
                              "retried": retried, **cool, "end_temp_c": after.get("max_temp_c"),
                              "end_thermal_status": after.get("status"),
                              "freq_khz": _freq_summary(freq)})
        res["complete"] = len(res["blocks"]) == len(blocks)
        s.record["order"].append(res["model"])
        s.record["reconnects"] = s.conn.reconnects
        s.save(partial=True)
        s.prog.advance(task)
    s.prog.update(task, description="done")
    s.record["reconnects"] = s.conn.reconnects
    s.record["partial"] = False
    return dict(s.record)


def _freq_summary(freq_samples: list[dict]) -> dict:
    """Per pinned core: lowest and highest ``scaling_cur_freq`` seen during a block (the full trace is kept in the
    result's ``freq_samples``)."""
    out: dict = {}
    for sample in freq_samples:
        for cpu, khz in sample["khz"].items():
            if khz is None:
                continue
            lo, hi = out.get(str(cpu), (khz, khz))
            out[str(cpu)] = (min(lo, khz), max(hi, khz))
    return {cpu: {"min": lo, "max": hi} for cpu, (lo, hi) in out.items()}


def thermal_summary(record: dict) -> dict:
    """What heat did to a run, for bench.json and the table: throttling, cool-down outcomes, frequency traces.

    ``flags`` holds one line per thing a reader must know (throttled blocks, cool-downs not reached or not
    checked, cores offline, a cpuset narrower than the pinned cores); empty when the run was clean."""
    results = record.get("results") or []
    cool = dict(record.get("cooldown") or {"reached": 0, "not_reached": 0, "unchecked": 0})
    models = {}
    flags = list(record.get("notes") or [])
    for res in results:
        blocks = res.get("blocks") or []
        throttled = [i for i, b in enumerate(blocks) if b.get("throttled")]
        models[res.get("model")] = {
            "throttled": bool(res.get("throttled")),
            "throttled_blocks": throttled,
            "cooldown_reached": [b.get("cooldown_reached") for b in blocks],
            "start_temp_c": [b.get("start_temp_c") for b in blocks],
            "end_temp_c": [b.get("end_temp_c") for b in blocks],
            "thermal_status": [b.get("end_thermal_status") for b in blocks],
            "freq_khz": [b.get("freq_khz") for b in blocks],
            "freq_samples": res.get("freq_samples") or [],
        }
        if throttled:
            flags.append(f"THROTTLED: {res.get('model')} ran below {len(throttled)} of {len(blocks)} blocks' full "
                         f"clock (blocks {', '.join(str(i + 1) for i in throttled)}); its times are pessimistic")
    if cool.get("not_reached"):
        flags.append(f"cool-down not reached before {cool['not_reached']} block(s): they started warmer than idle")
    if cool.get("unchecked"):
        flags.append(f"cool-down not checked before {cool['unchecked']} block(s): no temperature could be read")
    return {"throttled": bool(record.get("throttled")), "thermal_source": record.get("thermal_source"),
            "idle_temp_c": record.get("idle_temp_c"), "cooldown": cool, "cores_policy": record.get("cores_policy"),
            "pinned_cores": record.get("pinned_cores"), "offline_cores": record.get("offline_cores"),
            "shell_cpuset": record.get("shell_cpuset"), "models": models, "flags": flags}
