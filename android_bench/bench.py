"""The benchmark protocol on one device: push once, cool down, run pinned and detached, poll, pull raw samples.

Per run of ``run_benchmark``:

1. connect (``~/.android/adbkey``), record the device (``device_info``), check the runner's ABI;
2. push the runner's files and the models into ``/data/local/tmp/edgeprune/``, skipping files whose sha256 on the
   device already matches (so ``keep=True`` makes the next run push nothing);
3. pin to the big cores (highest ``cpuinfo_max_freq``, or ``cores``), threads = pinned cores (or ``threads``);
4. for each block — dense and slim alternate A B A B when a baseline is given — wait until the temperature is back near
   the idle baseline (at most ``cooldown_seconds``), start the runner detached (``nohup … &``, output to a file),
   poll for its exit code while sampling ``scaling_cur_freq`` of the pinned cores, pull the output and parse it;
5. a block interrupted by a lost connection is retried once after reconnecting; after every block everything measured
   so far is written atomically to ``partial_path``, whose name every error message carries;
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
from android_bench.device_info import collect_device_info, cores_of, max_temperature, read_thermal
from android_bench.errors import (
    AbiMismatchError,
    AndroidBenchError,
    BenchTimeoutError,
    DeviceCommandError,
    DeviceDisconnectedError,
    RunnerCrashError,
)
from android_bench.runners.base import Runner, RunSpec, get_runner
from android_bench.transport import AdbConnection

log = logging.getLogger(__name__)

WORKDIR = "/data/local/tmp/edgeprune"
POLL_INTERVAL_S = 0.25
DEFAULT_BLOCK_TIMEOUT_S = 900.0


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
        """Wait until the hottest thermal zone is within ``tolerance_c`` of the idle baseline, at most ``limit_s``."""
        start = time.monotonic()
        temp = max_temperature(read_thermal(self.conn)) if idle_c is not None else None
        while idle_c is not None and temp is not None and temp > idle_c + tolerance_c:
            if time.monotonic() - start >= limit_s:
                log.warning("still %.1f °C after %.0f s of cool-down (idle %.1f °C); running anyway",
                            temp, limit_s, idle_c)
                return {"cooldown_s": round(time.monotonic() - start, 3), "cooldown_reached": False,
                        "start_temp_c": temp}
            time.sleep(min(1.0, max(0.1, limit_s / 20)))
            temp = max_temperature(read_thermal(self.conn))
        return {"cooldown_s": round(time.monotonic() - start, 3), "cooldown_reached": True, "start_temp_c": temp}

    def run_block(self, spec: RunSpec, tag: str, pinned: list[int], timeout_s: float,
                  status) -> tuple[list[float], list[dict]]:
        """Start the runner detached, poll exit code + frequencies, pull and parse its output."""
        out_dir = f"{self.workdir}/out"
        out, rcf, pidf = (f"{out_dir}/{tag}.{ext}" for ext in ("txt", "rc", "pid"))
        inner = f"echo $$ > {shlex.quote(pidf)}; ({self.runner.command(spec)}) > {shlex.quote(out)} 2>&1; " \
                f"echo $? > {shlex.quote(rcf)}"
        launch = (f"mkdir -p {shlex.quote(out_dir)} && cd {shlex.quote(self.workdir)} && rm -f {out} {rcf} {pidf} && "
                  f"nohup sh -c {shlex.quote(inner)} > /dev/null 2>&1 < /dev/null &")
        # Never retried blindly: a second launch would run the model twice at once.
        self.running_pidf = pidf
        _, rc = self.conn.run(launch, retry=False)
        if rc != 0:
            raise DeviceCommandError(f"could not start the runner on the device (exit code {rc})")
        freq_cmd = " ".join(f"{c}:$(cat {d}/scaling_cur_freq 2>/dev/null):$(cat {d}/scaling_max_freq 2>/dev/null)"
                            for c in pinned for d in [f"/sys/devices/system/cpu/cpu{c}/cpufreq"])
        poll = f"cat {rcf} 2>/dev/null; echo __F {freq_cmd}"
        start = time.monotonic()
        samples: list[dict] = []
        while True:
            text, _ = self.conn.run(poll)
            head, _, freqs = text.partition("__F")
            khz, cap = {}, {}
            for tok in freqs.split():
                cpu, cur, top = (tok.split(":") + ["", ""])[:3]
                if cpu.isdigit():
                    khz[int(cpu)] = int(cur) if cur.isdigit() else None
                    cap[int(cpu)] = int(top) if top.isdigit() else None
            elapsed = time.monotonic() - start
            if khz:
                samples.append({"t": round(elapsed, 3), "khz": khz, "max_khz": cap})
                status(khz)
            code = head.strip()
            if code.lstrip("-").isdigit():
                break
            if elapsed > timeout_s:
                self.conn.run(_kill_tree(pidf))
                self.running_pidf = None
                raise BenchTimeoutError(
                    f"{tag}: the runner did not finish within {timeout_s:.0f} s and was stopped: lower --runs or "
                    f"raise the timeout"
                )
            time.sleep(POLL_INTERVAL_S)
        self.running_pidf = None
        with tempfile.TemporaryDirectory(prefix="android_bench-") as tmp:
            local = pathlib.Path(tmp) / "out.txt"
            self.conn.pull(out, local)
            output = local.read_text(errors="replace")
        if int(code) != 0:
            raise RunnerCrashError(f"runner {self.runner.name} exited with code {code}: {_tail(output)}")
        return self.runner.parse(output), samples

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
) -> dict:
    """Time every model (and ``baseline``) ``runs`` times on the device ``serial``; return device record + raw samples.

    ``rounds`` (default 2 with a baseline, else 1) splits ``runs`` into that many blocks per model, interleaved
    baseline, model, baseline, model … so slow drifts (heat, background load) hit both alike. Raises a subclass of
    ``AndroidBenchError``; its ``partial_path`` holds everything measured before the failure.

    ``idle_temp_c`` is the cool-down target (default: the hottest thermal zone when the run starts);
    ``auth_timeout_s`` is how long the user has to tap "Allow" on a phone that does not know this computer yet.
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
    rounds = rounds or (2 if baseline is not None else 1)
    blocks = split_runs(runs, rounds)
    runner_obj = get_runner(runner) if isinstance(runner, str) else runner
    timeout_s = timeout_s or DEFAULT_BLOCK_TIMEOUT_S
    auto_partial = partial_path is None
    partial_path = pathlib.Path(partial_path) if partial_path is not None else pathlib.Path(
        tempfile.gettempdir()) / f"android_bench-partial-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"

    conn = AdbConnection(serial, key_path=key_path, auth_timeout_s=auth_timeout_s)
    with _progress(progress) as prog:
        session = _Session(conn, runner_obj, workdir, partial_path, prog)
        try:
            result = _run(session, entries, blocks, runs, warmup, threads, cores, cooldown_seconds, input_shape,
                          timeout_s, throttle_ratio, temp_tolerance_c, idle_temp_c)
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


def _run(s: _Session, entries, blocks, runs, warmup, threads, cores, cooldown_seconds, input_shape, timeout_s,
         throttle_ratio, temp_tolerance_c, idle_temp_c) -> dict:
    task = s.prog.add_task("connecting", total=len(blocks) * len(entries))
    s.conn.connect()
    info = collect_device_info(s.conn)
    runner = s.runner
    s.record = {"android_bench_version": __version__, "device": info, "runner": runner.name, "results": [],
                "order": [], "pushed": s.pushed, "partial": True, "error": None}
    if runner.abi and runner.abi not in info["abilist"]:
        raise AbiMismatchError(
            f"runner {runner.name} needs {runner.abi} but {info['model']} supports only "
            f"{', '.join(info['abilist']) or 'unknown ABIs'}: use a runner built for this ABI"
        )
    mask = cores or info["big_core_mask"] or None
    pinned = cores_of(mask) if mask else info["online_cpus"]
    nthreads = threads or len(pinned) or 1
    max_khz = {c["cpu"]: c.get("cpuinfo_max_freq") for c in info["cpus"] if isinstance(c.get("cpuinfo_max_freq"), int)}
    idle_c = idle_temp_c if idle_temp_c is not None else max_temperature(info["thermal_zones"])
    s.record.update({"cores": mask, "threads": nthreads, "idle_temp_c": idle_c})

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
                        "threads": nthreads, "cores": mask, "samples_ms": [], "throttled": False,
                        "freq_samples": [], "blocks": [], "retried": False, "complete": False})
    s.record["results"] = results

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
                samples, freq = s.run_block(spec, tag, pinned, timeout_s, status)
                break
            except DeviceDisconnectedError as exc:
                if attempt == 1:
                    raise DeviceDisconnectedError(
                        f"lost the connection twice while running {label}: check the cable / Wi-Fi and rerun "
                        f"({exc})") from exc
                log.warning("connection lost during %s; reconnecting and running the block again", label)
                retried = True
                time.sleep(0.5)
                s.kill_stale(tag)
        throttled = is_throttled(freq, max_khz, throttle_ratio)
        res["samples_ms"].extend(samples)
        res["runs"] = len(res["samples_ms"])
        res["freq_samples"].extend({"block": n, **f} for f in freq)
        res["throttled"] = res["throttled"] or throttled
        res["retried"] = res["retried"] or retried
        res["blocks"].append({"round": rnd, "runs": len(samples), "started_at": round(started, 3),
                              "duration_s": round(time.time() - started, 3), "throttled": throttled,
                              "retried": retried, **cool})
        res["complete"] = len(res["blocks"]) == len(blocks)
        s.record["order"].append(res["model"])
        s.record["reconnects"] = s.conn.reconnects
        s.save(partial=True)
        s.prog.advance(task)
    s.prog.update(task, description="done")
    s.record["reconnects"] = s.conn.reconnects
    s.record["partial"] = False
    return dict(s.record)
