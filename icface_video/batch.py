"""``icface-video batch``: many reenactment jobs, validated first, parallel, resumable, shardable.

Job file formats (one job per row / line / table): CSV with a header, JSONL, or TOML with
``[[job]]`` tables. Fields (``FIELDS``) are ``reenact``'s options, defined once in
:mod:`icface_video.options` (:data:`~icface_video.options.BATCH_FIELDS`): ``source``,
``driving``, ``output``, ``preset`` and ``set`` (several separated by ``;`` in CSV, or
lists), ``mode``, ``relative``, part drivers ``pose_from`` ... ``brows_from``, smoothing,
render and encoding options, ``eyelids``, face options.
Relative input paths resolve against the job file's folder; relative outputs against
OUTDIR; a job without ``output`` gets a deterministic name from its inputs and options.

State (for ``--resume``): one small JSON file per finished job under
``OUTDIR/.icface-batch/``, written after the output was renamed into place, holding the
inputs' sizes and mtimes and a hash of the options. Shards share OUTDIR safely: every
file a job writes is its own, and ``report.json`` is rebuilt from the state files
under a file lock.

Workers stream each job's entry to the main process as it ends (a queue), and end with
the main process however it ends (:func:`follow_parent`), killing their ffmpeg
processes and deleting their temporary files.
"""

from __future__ import annotations

import csv
import ctypes
import fcntl
import glob
import hashlib
import json
import os
import queue
import signal
import stat
import sys
import threading
import time
import tomllib
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, NoReturn

from .controls import parse_set
from .encode import output_format
from .errors import IcfaceError, InputError, UsageError
from .options import BATCH_FIELDS as FIELDS, DEFAULTS, PART_FIELDS, ReenactOptions, option_spec, parse_value
from .runtime import halt

if TYPE_CHECKING:
    import multiprocessing.queues

EXIT_SOME_FAILED = 4
#: the input files of a job (resolved against the job file's folder, probed), and the fields
#: whose values ``validate`` types and checks by their options' specs alone.
_PATH_FIELDS = tuple(k for k in FIELDS if option_spec(k).kind == "path")
_PLAIN_FIELDS = tuple(k for k in FIELDS if option_spec(k).kind in ("choice", "int", "float", "bool"))
STATE_DIR = ".icface-batch"
REPORT_NAME = "report.json"


@dataclass
class JobSpec:
    """A validated job row.

    Attributes:
        row: 1-based row number in the job file (for messages).
        fields: normalised values (paths absolute, lists for preset/set).
        output: absolute output path.
    """

    row: int
    fields: dict
    output: str

    @property
    def key(self) -> str:
        return self.output

    def inputs(self) -> list[str]:
        paths = [self.fields["source"]] + [self.fields[k] for k in ("driving", *PART_FIELDS) if self.fields.get(k)]
        for p in self.fields.get("preset", []):
            if Path(p).is_file():
                paths.append(p)
        return paths

    def options_hash(self) -> str:
        opts = {k: v for k, v in sorted(self.fields.items()) if k not in ("source", "driving", *PART_FIELDS)}
        return hashlib.sha256(json.dumps(opts, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def fingerprint(self) -> dict:
        """Inputs (path, size, mtime) and options hash: what makes a finished output current."""
        files = []
        for p in self.inputs():
            st = os.stat(p)
            files.append([p, st.st_size, st.st_mtime_ns])
        return {"inputs": files, "options": self.options_hash()}


@dataclass
class Problem:
    row: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.field}: {self.reason}"


# -- reading job files -----------------------------------------------------------------


def read_rows(path: Path) -> list[tuple[int, dict]]:
    """(row number, raw dict) pairs from a CSV, JSONL or TOML job file.

    A UTF-8 byte order mark (what Excel writes) is ignored.

    Raises:
        InputError: unreadable or malformed file, or a file with no job in it.
    """
    from .media import file_problem

    problem = file_problem(path, "a job file")
    if problem == "no such file":
        raise InputError(path, "no such job file")
    if problem and problem != "empty file":
        raise InputError(path, problem)
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read job file ({exc.__class__.__name__})") from None
    rows = _parse_rows(path, suffix, text)
    if not rows:
        raise InputError(path, "no jobs in the job file" + (" (it is empty)" if not text.strip() else ""))
    return rows


def _parse_rows(path: Path, suffix: str, text: str) -> list[tuple[int, dict]]:
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines(), skipinitialspace=True)
        rows = []
        for n, row in enumerate(reader, start=2):
            if None in row:
                raise InputError(path, f"line {n}: more values than header columns")
            clean = {k.strip(): v.strip() for k, v in row.items() if k is not None and v is not None and v.strip() != ""}
            if clean:
                rows.append((n, clean))
        return rows
    if suffix in (".jsonl", ".ndjson", ".json"):
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(path, f"line {n}: not JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise InputError(path, f"line {n}: expected a JSON object")
            rows.append((n, obj))
        return rows
    if suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InputError(path, f"TOML syntax error: {exc}") from None
        if set(data) - {"job"}:
            raise InputError(path, "expected only [[job]] tables")
        return [(i, j) for i, j in enumerate(data.get("job", []), start=1)]
    raise InputError(path, "job file must end in .csv, .jsonl or .toml")


def default_output(fields: dict) -> str:
    """Deterministic output name: <source>__<driver>[__<presets>]__<hash of everything>.mp4 (.mov for ProRes)."""
    stem = Path(fields["source"]).stem
    drv = fields.get("driving") or next((fields[k] for k in PART_FIELDS if fields.get(k)), None)
    parts = [stem] + ([Path(drv).stem] if drv else []) + [Path(p).stem for p in fields.get("preset", [])]
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:8]
    name = "__".join(parts)[:100]
    return f"{name}__{digest}{'.mov' if fields.get('codec') == 'prores' else '.mp4'}"


def validate(rows: list[tuple[int, dict]], base: Path, outdir: Path,
             allow_outside: bool = False) -> tuple[list[JobSpec], list[Problem]]:
    """Check every row; returns the good jobs and every problem found (nothing is run).

    ``allow_outside``: outputs may resolve outside ``outdir`` (see :func:`output_problem`).
    """
    from . import presets as P
    from .media import file_problem, probe

    jobs: list[JobSpec] = []
    problems: list[Problem] = []
    probed: dict[str, str | None] = {}

    def check_media(path: str) -> str | None:
        if path not in probed:
            if path.lower().endswith(".csv"):
                probed[path] = file_problem(path, "an attribute CSV")
            else:
                try:
                    probe(path)
                    probed[path] = None
                except InputError as exc:
                    probed[path] = exc.problem
        return probed[path]

    for row, raw in rows:
        bad = [Problem(row, k, f"unknown field (expected {', '.join(FIELDS)})") for k in raw if k not in FIELDS]
        f: dict = {}
        for key in _PATH_FIELDS:
            value = raw.get(key)
            if value in (None, ""):
                continue
            p = Path(str(value)).expanduser()
            f[key] = str((p if p.is_absolute() else base / p).resolve())
            problem = check_media(f[key])
            if problem:
                bad.append(Problem(row, key, f"{value}: {problem}"))
        if "source" not in f and not any(b.field == "source" for b in bad):
            bad.append(Problem(row, "source", "missing"))
        try:
            f["preset"] = list(parse_value("preset", raw.get("preset")))
            resolved = []
            for name in f["preset"]:
                candidate = name if (name.endswith(".toml") or "/" in name) else None
                target = str((base / candidate).resolve()) if candidate and not Path(candidate).is_absolute() else (candidate or name)
                P.load(target)
                resolved.append(target)
            f["preset"] = resolved
        except IcfaceError as exc:
            bad.append(Problem(row, "preset", str(exc)))
        try:
            f["set"] = list(parse_value("set", raw.get("set")))
            for expr in f["set"]:
                parse_set(expr)
        except IcfaceError as exc:
            bad.append(Problem(row, "set", str(exc)))
        for key in _PLAIN_FIELDS:  # one problem per bad field
            if key in raw:
                try:
                    f[key] = parse_value(key, raw[key])
                except ValueError as exc:
                    bad.append(Problem(row, key, str(exc)))
        if "source" in f and not bad:
            try:
                if probe(f["source"]).is_still and not f.get("driving") and not any(f.get(k) for k in PART_FIELDS):
                    bad.append(Problem(row, "driving", "a photo source needs driving (or a part driver)"))
            except InputError:
                pass
        if bad:
            problems.extend(bad)
            continue
        out = raw.get("output")
        if out:
            p = Path(str(out)).expanduser()
            output = str((p if p.is_absolute() else outdir / p).resolve())
        else:
            output = str((outdir / default_output(f)).resolve())
        spec = JobSpec(row, f, output)
        problem = output_problem(output, outdir, spec.inputs(), allow_outside)
        if problem:
            problems.append(Problem(row, "output", problem))
            continue
        try:
            if output_format(output, f.get("codec", DEFAULTS.codec), f.get("alpha", DEFAULTS.alpha)).sequence:
                raise UsageError(f"{out}: image sequences are written by `reenact`, not by batch")
        except UsageError as exc:
            problems.append(Problem(row, "output", str(exc)))
            continue
        jobs.append(spec)
    seen: dict[str, int] = {}
    for job in jobs:
        if job.output in seen:
            problems.append(Problem(job.row, "output", f"same output as row {seen[job.output]}: {job.output}"))
        seen.setdefault(job.output, job.row)
    return jobs, problems


def output_problem(output: str, outdir: Path, inputs: list[str], allow_outside: bool) -> str | None:
    """Why a job may not write ``output`` (absolute, resolved), or None when it may.

    Refused: the batch's own files (``OUTDIR/report.json``, anything under
    ``OUTDIR/.icface-batch/``), one of the job's inputs, a path outside OUTDIR unless
    ``allow_outside``, and anything that exists but is not a regular file.
    """
    from .outputs import file_kind, same_file

    out, root = Path(output), outdir.resolve()
    if out == root / REPORT_NAME or root / STATE_DIR in (out, *out.parents):
        return f"{output}: reserved for the batch's own files ({REPORT_NAME}, {STATE_DIR}/)"
    for src in inputs:
        if same_file(src, out):
            return f"{output}: is also an input of the job"
    if not allow_outside and root not in out.parents:
        return f"{output}: outside OUTDIR {root} (use --allow-outside to write there)"
    try:
        mode = os.stat(out).st_mode
    except OSError:
        return None
    if not stat.S_ISREG(mode):
        return f"{output}: is {file_kind(mode)}; only a regular file can be written or replaced"
    return None


def pairs_from_globs(source_glob: str, driving_glob: str, zip_pairs: bool) -> list[tuple[int, dict]]:
    """Rows for the ``--source GLOB --driving GLOB`` shorthand (every pair, or zipped in order)."""
    sources = sorted(glob.glob(source_glob))
    drivers = sorted(glob.glob(driving_glob))
    if not sources:
        raise UsageError(f"--source {source_glob!r}: matches no file")
    if not drivers:
        raise UsageError(f"--driving {driving_glob!r}: matches no file")
    if zip_pairs:
        if len(sources) != len(drivers):
            raise UsageError(f"--zip: {len(sources)} sources but {len(drivers)} drivers")
        combos = list(zip(sources, drivers))
    else:
        combos = [(s, d) for s in sources for d in drivers]
    return [(i, {"source": s, "driving": d}) for i, (s, d) in enumerate(combos, start=1)]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r}: expected K/N, e.g. 1/4") from None
    if not 1 <= k <= n:
        raise UsageError(f"--shard {text!r}: K must be within 1..N")
    return k, n


def in_shard(job: JobSpec, shard: tuple[int, int] | None) -> bool:
    """Deterministic split by a hash of the output path: the same job always lands in the same shard."""
    if shard is None:
        return True
    k, n = shard
    h = int(hashlib.sha256(job.output.encode()).hexdigest()[:12], 16)
    return h % n == k - 1


# -- state and report --------------------------------------------------------------------


def _state_path(outdir: Path, job: JobSpec) -> Path:
    name = hashlib.sha256(job.output.encode()).hexdigest()[:20]
    return outdir / STATE_DIR / f"{name}.json"


def is_complete(outdir: Path, job: JobSpec) -> bool:
    """True when the output exists and its recorded inputs and options are unchanged."""
    sp = _state_path(outdir, job)
    if not (Path(job.output).is_file() and sp.is_file()):
        return False
    try:
        state = json.loads(sp.read_text())
        return state.get("status") == "done" and state.get("fingerprint") == job.fingerprint() \
            and state.get("output_size") == Path(job.output).stat().st_size
    except (OSError, json.JSONDecodeError):
        return False


def record(outdir: Path, job: JobSpec, entry: dict) -> None:
    """Write a job's state file atomically."""
    sp = _state_path(outdir, job)
    sp.parent.mkdir(parents=True, exist_ok=True)
    tmp = sp.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(entry))
    os.replace(tmp, sp)


def write_report(outdir: Path) -> Path:
    """Rebuild OUTDIR/report.json from every job's state file (under a lock: shards share it)."""
    state_dir = outdir / STATE_DIR
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = []
        for sp in sorted(state_dir.glob("*.json")):
            try:
                entries.append(json.loads(sp.read_text()))
            except (OSError, json.JSONDecodeError):
                continue
        entries.sort(key=lambda e: (e.get("row", 0), e.get("output", "")))
        report = {"jobs": len(entries), "done": sum(e["status"] == "done" for e in entries),
                  "failed": sum(e["status"] == "failed" for e in entries), "entries": entries}
        tmp = outdir / f".report.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(report, indent=1))
        os.replace(tmp, outdir / "report.json")
    return outdir / "report.json"


def _remove_stale_temps(output: str) -> None:
    """Temporary files a killed run left for this output (``.<stem>.*.part<suffix>``)."""
    p = Path(output)
    for tmp in p.parent.glob(f".{glob.escape(p.stem)}.*.part{p.suffix}"):
        try:
            tmp.unlink()
        except OSError:
            pass


# -- running ------------------------------------------------------------------------------


def to_reenact_job(spec: JobSpec, overwrite: bool = True):
    """The :class:`icface_video.jobs.ReenactJob` of a validated row (through the one planner's
    :func:`~icface_video.jobs.reenact_job`, as ``reenact`` and the API make theirs)."""
    from .jobs import reenact_job

    return reenact_job(ReenactOptions(**spec.fields, output=spec.output), overwrite)


_WORKER: dict = {}

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_POLL_SECONDS = 0.25


_stop_request = threading.Event()


def stop_worker_now(exit_code: int = 128 + int(signal.SIGTERM)) -> NoReturn:
    """End this worker at once: kill its ffmpeg processes, delete its temporary files, exit.

    What a batch worker does when its parent is gone or it got SIGTERM (from the
    watching thread, never from a signal handler: see :func:`icface_video.runtime.halt`).
    """
    from .encode import kill_encoders
    from .outputs import remove_live_temps

    halt(exit_code, (kill_encoders, remove_live_temps))


def _request_stop(signum: int, frame: object) -> None:
    """SIGTERM handler of batch workers: wake the watching thread, which stops the worker."""
    _stop_request.set()


def follow_parent(parent_pid: int) -> None:
    """Make this worker process end, with its encoders, whenever ``parent_pid`` ends.

    However the batch's main process ends (exit, SIGTERM, ``kill -9``, a crash), its
    workers must not go on writing into OUTDIR. A daemon thread checks every
    ``PARENT_POLL_SECONDS`` that the parent is still ours (``os.getppid``) and ends the
    worker with :func:`stop_worker_now` when it is not, or at once when SIGTERM arrives
    (Linux: ``PR_SET_PDEATHSIG`` sends SIGTERM when the parent dies). The stop runs in
    that thread, not in the signal handler, so the main thread is never interrupted
    halfway through creating a temporary file or an encoder.
    """
    signal.signal(signal.SIGTERM, _request_stop)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent_pid and not _stop_request.wait(PARENT_POLL_SECONDS):
            pass
        stop_worker_now()

    threading.Thread(target=watch, name="icface-batch-parent-watch", daemon=True).start()


def _worker_init(model_path: str | None, device: str, threads: int, in_process: bool = False,
                 parent_pid: int | None = None, events=None) -> None:
    if parent_pid is not None:
        follow_parent(parent_pid)  # first: the parent may die while torch loads
    if events is not None:
        _WORKER["events"] = events  # each finished job's entry goes here at once (streamed --json)
    try:
        import torch

        from .model import ReenactmentModel
        from .tensors import pick_device
        from .track import set_analysis_workers

        if not in_process:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
            torch.set_num_threads(max(1, threads))
            set_analysis_workers(max(1, min(2, threads)))  # the cores are already shared between jobs
        _WORKER["model"] = ReenactmentModel.load(model_path, device=pick_device(device))
        from .memo import AnalysisCache

        _WORKER["cache"] = AnalysisCache()
    except Exception as exc:
        if in_process:
            raise
        # A worker that cannot start fails its jobs with the reason (one line each)
        # instead of logging a traceback and breaking the pool.
        _WORKER["init_error"] = str(exc) if isinstance(exc, IcfaceError) else f"internal error: {type(exc).__name__}: {exc}"


def run_unit(specs: list[JobSpec], outdir: str) -> list[dict]:
    """Run jobs that share a source, in one worker (the source is analysed and encoded once)."""
    from .jobs import run_reenact

    results = []
    for spec in specs:
        start = time.perf_counter()
        entry = {"row": spec.row, "output": spec.output, "source": spec.fields["source"],
                 "driving": spec.fields.get("driving")}
        try:
            if "init_error" in _WORKER:
                raise IcfaceError(f"worker could not start: {_WORKER['init_error']}")
            _remove_stale_temps(spec.output)
            fingerprint = spec.fingerprint()
            summary = run_reenact(to_reenact_job(spec), _WORKER["model"], cache=_WORKER["cache"])
            entry.update(status="done", frames=summary["frames"], seconds=round(time.perf_counter() - start, 3),
                         error=None, fingerprint=fingerprint, output_size=Path(spec.output).stat().st_size)
        except IcfaceError as exc:
            entry.update(status="failed", frames=0, seconds=round(time.perf_counter() - start, 3), error=str(exc))
        except Exception as exc:  # isolate the failure: record it, go on with the batch
            entry.update(status="failed", frames=0, seconds=round(time.perf_counter() - start, 3),
                         error=f"internal error: {type(exc).__name__}: {exc}")
        record(Path(outdir), spec, entry)
        results.append(entry)
        if _WORKER.get("events") is not None:
            _WORKER["events"].put(entry)
    return results


@dataclass
class BatchResult:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    entries: list = field(default_factory=list)
    report: str = ""


def run_batch(jobs: list[JobSpec], outdir: Path, workers: int, model_path: str | None, device: str,
              on_done: Callable[[dict], None] | None = None) -> BatchResult:
    """Run jobs grouped by source over ``workers`` processes; returns counts and entries."""
    units: dict[str, list[JobSpec]] = {}
    for job in jobs:
        units.setdefault(job.fields["source"], []).append(job)
    # Keep a source's jobs together (analysed and encoded once), but split the biggest
    # groups while there are fewer groups than workers, so every worker has work.
    groups = sorted(units.values(), key=len, reverse=True)
    while len(groups) < workers and len(groups[0]) > 1:
        big = groups.pop(0)
        half = (len(big) + 1) // 2
        groups = sorted(groups + [big[:half], big[half:]], key=len, reverse=True)
    result = BatchResult()
    cores = os.cpu_count() or 1
    threads = max(1, cores // max(1, workers))
    from .tensors import pick_device

    if pick_device(device).type == "cpu":
        # CPU: worker processes, each with its own model and torch threads.
        ctx = get_context("spawn")
        events: queue.Queue | multiprocessing.queues.Queue = ctx.Queue()
        pool: Executor = ProcessPoolExecutor(max_workers=max(1, workers), mp_context=ctx, initializer=_worker_init,
                                   initargs=(model_path, device, threads, False, os.getpid(), events))
    else:
        # GPU: one model on the device, shared by worker threads (decode, analysis and
        # encoding overlap; the generator calls share the one model).
        events = queue.Queue()
        _worker_init(model_path, device, threads, in_process=True, events=events)
        pool = ThreadPoolExecutor(max_workers=max(1, workers))
    reported: set[str] = set()

    def report(entry: dict) -> None:
        if entry["output"] in reported:
            return
        reported.add(entry["output"])
        result.entries.append(entry)
        if entry["status"] == "done":
            result.done += 1
        else:
            result.failed += 1
        if on_done:
            on_done(entry)

    with pool:
        futures = [pool.submit(run_unit, g, str(outdir)) for g in groups]
        try:
            # Entries arrive one per job as it ends (the events queue); a unit's returned
            # list is the fallback for any that did not come through the queue.
            pending = set(futures)
            while pending:
                try:
                    report(events.get(timeout=0.2))
                except queue.Empty:
                    pass
                for fut in [f for f in pending if f.done()]:
                    pending.discard(fut)
                    for entry in fut.result():
                        report(entry)
        except BaseException:
            for f in futures:
                f.cancel()
            stop_workers(pool)
            raise
    result.report = str(write_report(outdir))
    return result


def stop_workers(pool, timeout: float = 5.0) -> None:
    """SIGTERM a process pool's workers (each kills its ffmpeg and deletes its temporary
    files), then SIGKILL any still there after ``timeout`` seconds. No-op for threads."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for proc in procs:
        proc.terminate()
    deadline = time.monotonic() + timeout
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join(1.0)


def iter_dry_run(jobs: list[JobSpec]) -> Iterator[str]:
    for job in jobs:
        f = job.fields
        extras = {k: v for k, v in f.items() if k not in ("source", "driving") and v not in ([], None)}
        yield json.dumps({"row": job.row, "source": f["source"], "driving": f.get("driving"),
                          "output": job.output, **extras})
