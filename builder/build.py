"""The build driver, :func:`run_build` (``serwild build``): read the corpus → scan audio (Ray
tasks) → plan every sample (driver, seeded) → build shards (one Ray task per shard) →
manifest.json, rejects.jsonl, README.md (the hub card). Resumes: shards already built from
the same plan and still matching their sha256 are kept, the rest are rebuilt. One build per
folder at a time (a lock), and a build of another config needs ``overwrite``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import ray

from serwild import atomic, lock
from serwild.builder import hubcard, plan, scan
from serwild.builder.config import AudioConfig
from serwild.builder.corpus import Reject, read_corpus
from serwild.builder.labels import PRESETS, resolve_views
from serwild.builder.manifest import make_manifest
from serwild.builder.shards import build_shard
from serwild.config import NOT_BUILD_KEYS, Config, config_from_resolved, to_dict
from serwild.data.manifest import sha256_file
from serwild.data.publish import refuse_remote_out
from serwild.errors import UsageError
from serwild.progress import progress, stage
from serwild.synth.corpus import write_synthetic_corpus

T = TypeVar("T")
LOG = "build-log.jsonl"
HOLD_ENV = "SERWILD_BUILD_HOLD_AFTER"  # test hook: after N shards, stop and wait to be killed
SCAN_CHUNK = 32  # utterances per scan task: enough work to hide a task's overhead


DETAIL = re.compile(r"'[^']*'|\(.*\)")  # a quoted label code or a parenthesised detail
OUTSIDE_VIEWS = re.compile(r"^label '(.*)' not in the selected datasets")


def reject_summary(path: Path) -> Counter[str]:
    """Rejects grouped by reason, with the per-item details (duration, file names) cut out; labels
    outside every view are counted per label (a label the user forgot to put in a view shows)."""
    reasons: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        r = json.loads(line)
        m = OUTSIDE_VIEWS.match(r["reason"])
        what = f"label '{m.group(1)}' in no selected dataset" if m else DETAIL.sub("…", r["reason"])
        reasons[r["stage"] + ": " + what] += 1
    return reasons


def run_build(cfg: Config, executor: str = "ray", overwrite: bool = False) -> Path:
    """Build (or resume) the shards described by ``cfg``; returns the build folder.

    The folder is locked for the whole build (:mod:`serwild.lock`): a second build into it
    is refused at once. A folder holding a finished build of another config is replaced
    only with ``overwrite``.
    """
    refuse_remote_out(cfg.out)  # a build writes a folder; `serwild publish` uploads it
    out = Path(cfg.out)
    _ensure_corpus(cfg)
    views = resolve_views(cfg.datasets, cfg.views)
    utts, rejects = read_corpus(cfg.corpus, cfg.datasets, views)
    if not utts:
        raise UsageError(f"corpus.root {cfg.corpus.root}: no usable utterance "
                         f"({len(rejects)} rejected; first: {rejects[0].reason if rejects else '-'})")
    stage("build", f"corpus: {len(utts)} utterance(s) to scan, {len(rejects)} rejected so far; datasets "
          + "; ".join(f"{d} ({len(v.classes)} classes)" for d, v in views.items()))
    noises, noise_rejects = ([], [])
    if cfg.snr_db:
        noises, noise_rejects = scan.scan_noise(Path(cfg.noise.dir), cfg.audio, cfg.noise.test_fraction)
    rejects += noise_rejects
    plan.check_corpus_classes(utts, views)
    with _claim(out, cfg, overwrite), _executor(executor, cfg, out) as pmap:
        scanned = []
        chunks = [utts[i:i + SCAN_CHUNK] for i in range(0, len(utts), SCAN_CHUNK)]
        for ok, bad in pmap(scan.scan_chunk, [(c, cfg.audio) for c in chunks], "scan audio"):
            scanned.extend(ok)
            rejects.extend(bad)
        scanned.sort(key=lambda s: s.utt.id)
        specs = plan.plan_shards(scanned, noises, cfg)
        stage("build", f"plan: {len(specs)} shard(s), {sum(len(x.samples) for x in specs)} sample(s) "
              f"from {len(scanned)} utterance(s)")
        out.mkdir(parents=True, exist_ok=True)
        done, todo = _resume_state(out, specs, cfg.audio)
        _remove_strays(out, {s.path for s in specs}, cfg.datasets)
        if done:
            print(f"resume: {len(done)} shard(s) already built and verified, {len(todo)} to build",
                  file=sys.stderr)
        with open(out / LOG, "a") as log:
            for stats in with_hold(pmap(build_shard, [(s, str(out), cfg.audio) for s in todo], "build shards")):
                done[stats.path] = asdict(stats)
                log.write(json.dumps(done[stats.path], sort_keys=True) + "\n")
                log.flush()
                os.fsync(log.fileno())
        records = [done[s.path] for s in specs]
        for r in records:
            rejects.extend(Reject(**x) for x in r.pop("rejects", []))
        rejects.sort(key=lambda r: (r.stage, r.item, r.block if r.block is not None else -1, r.reason))
        atomic.write_text(out / "rejects.jsonl", "".join(json.dumps(r.to_dict(), sort_keys=True) + "\n"
                                                          for r in rejects))
        stage("build", f"writing manifest.json, rejects.jsonl ({len(rejects)}) and README.md")
        manifest = make_manifest(cfg, records, rejects, scanned)
        atomic.write_json(out / "manifest.json", manifest)
        atomic.write_text(out / "README.md", hubcard.readme(manifest))  # the one dataset card (what hubs read)
    return out


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    return {k: v for key, sub in d.items() for k, v in _flat(sub, f"{prefix}{key}.").items()} if d else {prefix: d}


@contextlib.contextmanager
def _claim(out: Path, cfg: Config, overwrite: bool) -> Iterator[None]:
    """The build folder, locked (created if missing) and checked, for the rest of the build."""
    with lock.locked(out, "serwild build"):
        _check_same_build(out, cfg, overwrite)
        yield


def _check_same_build(out: Path, cfg: Config, overwrite: bool) -> None:
    """Refuse to replace a finished build of another config without ``overwrite`` (a resume of
    the same config goes ahead). With it, the old manifest goes first: the folder no longer
    holds that build, and a killed overwrite resumes without the flag."""
    path = out / "manifest.json"
    if not path.is_file():
        return
    try:
        # Read back through the config schema, so a key added since (at its default) is no difference.
        old_cfg = json.loads(json.dumps(to_dict(config_from_resolved(json.loads(path.read_text())["config"]))))
        old = {k: v for k, v in old_cfg.items() if k not in NOT_BUILD_KEYS}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, UsageError):
        old = None
    new = {k: v for k, v in json.loads(json.dumps(to_dict(cfg))).items() if k not in NOT_BUILD_KEYS}
    if old == new:
        return
    if not overwrite:
        if old is None:
            what = "a manifest.json serwild cannot read"
        else:
            a, b = _flat(old), _flat(new)
            diff = [f"{k.rstrip('.')}: {a.get(k, '-')} → {b.get(k, '-')}" for k in sorted(set(a) | set(b))
                    if a.get(k) != b.get(k)]
            what = f"a build of another config ({'; '.join(diff[:3])}{' …' if len(diff) > 3 else ''})"
        raise UsageError(f"{out} holds {what}: pass --overwrite to replace it, or set out=<another folder>")
    for name in ("manifest.json", "README.md"):
        (out / name).unlink(missing_ok=True)


def with_hold(results: Iterator[T]) -> Iterator[T]:
    """The results as they come, unless the test hook ``SERWILD_BUILD_HOLD_AFTER=N`` is set:
    then, once N shards are logged, the driver stops there (as if slow) until it is killed,
    so a test can kill a build mid-way deterministically."""
    hold = int(os.environ.get(HOLD_ENV, "0"))
    for i, item in enumerate(results, start=1):
        yield item
        if i == hold:
            print(f"{HOLD_ENV}: holding after {i} shards", file=sys.stderr, flush=True)
            while True:
                time.sleep(1)


def _ensure_corpus(cfg: Config) -> None:
    root = Path(cfg.corpus.root)
    if cfg.corpus.kind == "synthetic" and not root.exists():
        print(f"corpus.root {root} does not exist: synthesising the '{cfg.corpus.synth_size}' corpus there",
              file=sys.stderr)
        write_synthetic_corpus(root, size=cfg.corpus.synth_size, seed=cfg.seed)


def _resume_state(out: Path, specs: list, audio_cfg: AudioConfig) -> tuple[dict[str, dict], list]:
    """Shards from an earlier run of the same plan whose files still match; the rest to build."""
    logged: dict[str, dict] = {}
    if (out / LOG).is_file():
        for line in (out / LOG).read_text().splitlines():
            try:
                rec = json.loads(line)
                logged[rec["path"]] = rec
            except (json.JSONDecodeError, KeyError):
                continue  # a line cut by a kill: that shard is simply rebuilt
    render = audio_cfg.render_key()
    done, todo = {}, []
    for spec in specs:
        rec = logged.get(spec.path)
        f = out / spec.path
        if (rec and rec.get("digest") == spec.digest(render) and f.is_file()
                and f.stat().st_size == rec["bytes"] and sha256_file(f) == rec["sha256"]):
            done[spec.path] = rec
        else:
            todo.append(spec)
    return done, todo


def _remove_strays(out: Path, planned: set[str], datasets: list[str]) -> None:
    """Temp files of killed tasks, and shards of an older plan, under our own sub-folders (this
    build's datasets and the presets')."""
    atomic.remove_stale_temps(out)  # e.g. .manifest.json.tmp-<pid> of a killed driver
    for sub in dict.fromkeys([*datasets, *PRESETS]):
        for p in (out / sub).rglob("*") if (out / sub).is_dir() else []:
            rel = str(p.relative_to(out))
            # A temp file goes only when its writer is dead (the same rule as the trainer's).
            if p.is_file() and (atomic.is_stale_temp(p) or (p.suffix == ".tar" and rel not in planned)):
                p.unlink()


# ----------------------------------------------------------------------------- executors


class _executor:
    """Context manager giving ``pmap(fn, arg_tuples, desc) -> iterator of results``.

    "ray": one Ray task per item, at most 2 per CPU in flight (bounded driver memory),
    results in completion order; "serial": the same in this process.

    A local Ray keeps its session folder (logs, sockets, spilled objects) in a folder of its own
    under the build folder ``out``, or under the temp folder when ``out``'s path is too long for
    Ray's socket paths, and that folder is removed at the end. When the build fails, the temp
    shards its workers were writing are removed before the lock is released.
    """

    def __init__(self, kind: str, cfg: Config, out: Path | None = None) -> None:
        if kind not in ("ray", "serial"):
            raise UsageError(f"unknown executor {kind!r} (ray | serial)")
        self.kind, self.cfg, self.out, self.started = kind, cfg, out, False
        self.watchdog: subprocess.Popen | None = None
        self.ray_tmp: Path | None = None
        self.maps: list[Generator[Any, None, None]] = []  # handed out by _map, closed before Ray stops

    def __enter__(self) -> Callable[..., Iterator[Any]]:
        if self.kind == "serial":
            return _serial_map
        if not ray.is_initialized():
            addr = self.cfg.ray.address
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR",
                                      "log_to_driver": True}
            # ray.init makes SIGTERM a bare sys.exit(15); keep ours (serwild.cli: one line, exit 143).
            sigterm = signal.getsignal(signal.SIGTERM)
            if addr:
                ray.init(address=addr, **kwargs)
            else:
                self.ray_tmp = ray_temp_dir(self.out)
                if self.ray_tmp is not None:
                    kwargs["_temp_dir"] = str(self.ray_tmp)
                try:
                    ray.init(num_cpus=self.cfg.ray.num_cpus, **kwargs)
                except BaseException:
                    self._remove_ray_tmp()
                    raise
            self.started = True
            if sigterm is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, sigterm)
            if not addr:
                self.watchdog = _start_watchdog(self.ray_tmp)
        return self._map

    def _map(self, fn: Callable, items: list[tuple], desc: str) -> Iterator[Any]:
        gen = _ray_map(fn, items, desc)
        self.maps.append(gen)
        return gen

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        # A map the caller left early (its own error, SIGTERM) gets that exception at its yield,
        # so it winds its tasks down as if it had failed itself.
        for gen in self.maps:
            with contextlib.suppress(BaseException):
                if exc is not None:
                    gen.throw(exc)
                gen.close()
        if self.started:
            ray.shutdown()
        if self.watchdog is not None:  # ends what ray.shutdown left (agents still reporting to the GCS)
            self.watchdog.stdin.close()
            self.watchdog.wait()
        self._remove_ray_tmp()
        if exc_type is not None and self.started and self.out is not None:
            remove_worker_temps(self.out)

    def _remove_ray_tmp(self) -> None:
        if self.ray_tmp is not None:
            shutil.rmtree(self.ray_tmp, ignore_errors=True)
            self.ray_tmp = None


# Ray's longest unix socket path is <temp>/session_<date>_<time>_<µs>_<pid>/sockets/plasma_store.N,
# and such a path must fit in 107 bytes (sun_path): the session part takes up to 66 of them.
SOCKET_PATH_MAX = 107
RAY_SESSION_ROOM = 66
RAY_TMP_IN_BUILD = ".ray-"  # + 8 random characters (tempfile.mkdtemp)
RAY_TMP_ELSEWHERE = "serwild-ray-"


def ray_temp_dir(out: Path | None) -> Path | None:
    """A new folder for a local Ray's session: under ``out`` when the socket paths fit, else
    under the temp folder or /tmp; None (Ray's default) if none can be made. Called under the
    build folder's lock, so a ``.ray-*`` folder already in ``out`` is a crashed build's: removed."""
    candidates = []
    if out is not None:
        for stale in out.glob(RAY_TMP_IN_BUILD + "*"):
            shutil.rmtree(stale, ignore_errors=True)
        candidates.append((out.resolve(), RAY_TMP_IN_BUILD))
    candidates += [(Path(tempfile.gettempdir()).resolve(), RAY_TMP_ELSEWHERE), (Path("/tmp"), RAY_TMP_ELSEWHERE)]
    for parent, prefix in candidates:
        if len(os.fsencode(parent)) + 1 + len(prefix) + 8 + RAY_SESSION_ROOM > SOCKET_PATH_MAX:
            continue
        try:
            return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        except OSError:
            continue
    return None


WORKER_EXIT_WAIT_S = 10.0  # how long a failed build waits for its workers to be gone


def remove_worker_temps(out: Path, wait_s: float = WORKER_EXIT_WAIT_S) -> list[Path]:
    """After a failed Ray build: remove the temp shards (``.<name>.tmp-<pid>``) its workers left,
    once their writers are gone (up to ``wait_s``; then regardless: under the folder's lock no
    other writer exists, and a worker still alive has no task left). The removed paths."""
    deadline = time.monotonic() + wait_s
    removed: list[Path] = []
    while True:
        late = time.monotonic() > deadline
        alive = False
        for p in _shard_temps(out):
            if late or atomic.is_stale_temp(p):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p)
            else:
                alive = True
        if not alive:
            return removed
        time.sleep(0.1)


def _shard_temps(out: Path) -> list[Path]:
    """Temp files under the build's dataset folders (where shard tasks write): every folder of the
    build that is not hidden (Ray's own, .ray-*, is removed as a whole)."""
    subs = [d for d in out.iterdir() if d.is_dir() and not d.name.startswith(".")] if out.is_dir() else []
    return [p for sub in subs for p in sub.rglob(".*") if atomic.TEMP_NAME.match(p.name)]


# The local Ray cluster must not outlive a driver killed with SIGKILL. Its gcs, raylet and
# workers die with the driver (Ray asks the kernel for that), but the dashboard and
# runtime-env agents first try to tell the dead GCS, for 60 s (hard-coded in Ray). This
# watchdog, started after ray.init with the driver's descendants (PID and start time, so a
# reused PID is never hit), waits for EOF on a pipe only the driver holds (its exit, however
# it exits, or the end of __exit__) and then SIGKILLs those still running.
# It then removes Ray's session folder (its first argument; "" for none), which a driver killed
# with SIGKILL cannot.
WATCHDOG = """
import os, shutil, signal, sys
def start(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
sys.stdin.read()
for item in sys.argv[2:]:
    pid, started = item.split(":")
    if start(pid) == started:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
if sys.argv[1]:
    shutil.rmtree(sys.argv[1], ignore_errors=True)
"""


def _proc_stat(pid: int) -> tuple[int, str] | None:
    """(parent PID, start time) of a process, from /proc; None if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), fields[19]
    except (OSError, IndexError, ValueError):
        return None


def _is_ray(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return cmd.startswith(b"ray::") or b"/ray/" in cmd


def _start_watchdog(ray_tmp: Path | None) -> subprocess.Popen | None:
    if not Path("/proc/self/stat").is_file():
        return None  # no /proc (not Linux): no watchdog
    children: dict[int, list[tuple[int, str]]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (st := _proc_stat(int(d))):
            children.setdefault(st[0], []).append((int(d), st[1]))
    # Ray's processes only: the driver (a test process, say) may have other children.
    found, todo = [], [pid for pid, _ in children.get(os.getpid(), []) if _is_ray(pid)]
    starts = dict(x for kids in children.values() for x in kids)
    while todo:
        pid = todo.pop()
        found.append(f"{pid}:{starts[pid]}")
        todo.extend(p for p, _ in children.get(pid, []))
    # Its own session: a Ctrl-C meant for the build must not end the watchdog first.
    return subprocess.Popen([sys.executable, "-c", WATCHDOG, str(ray_tmp or ""), *found], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, start_new_session=True)


def _progress(total: int, desc: str) -> Any:
    # a bar on a terminal, whole lines in a log (serwild.progress)
    return progress(total, desc, unit="task", command="build")


def _serial_map(fn: Callable, items: list[tuple], desc: str) -> Iterator[Any]:
    with _progress(len(items), desc) as bar:
        for args in items:
            yield fn(*args)
            bar.update(1)


def _ray_map(fn: Callable, items: list[tuple], desc: str) -> Generator[Any, None, None]:
    remote = ray.remote(num_cpus=1, max_retries=2)(fn)
    limit = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    pending: list = []
    args_of: dict[Any, tuple] = {}  # task ref → its arguments, to name what failed
    queue = list(items)
    try:
        with _progress(len(items), desc) as bar:
            while queue or pending:
                while queue and len(pending) < limit:
                    args = queue.pop(0)
                    pending.append(ref := remote.remote(*args))
                    args_of[ref] = args
                ready, pending = ray.wait(pending, num_returns=1)
                try:
                    result = ray.get(ready[0])
                except ray.exceptions.RayError as e:  # the task raised, or its worker died (crash, OOM kill)
                    full = atomic.disk_full_cause(e)
                    if full is not None:  # the CLI's "no space left on device writing <file>", as without Ray
                        raise full from None
                    raise UsageError(f"{_task_name(args_of[ready[0]])}: {_ray_reason(e)}") from None
                del args_of[ready[0]]
                yield result
                bar.update(1)
    except BaseException as e:
        if not isinstance(e, KeyboardInterrupt):  # Ctrl-C, SIGTERM: stop now (ray.shutdown ends the tasks)
            _finish_tasks(pending)
        raise


FINISH_WAIT_S = 60.0  # how long a failing map waits for its other tasks in flight


def _finish_tasks(pending: list) -> None:
    """Let the tasks still in flight end (for up to FINISH_WAIT_S) when one has failed (a full
    disk, a bad file): killed mid-write by the driver's exit, they would leave their temp
    shards behind, while a task that ends removes its own (:func:`serwild.atomic.atomic_write`).
    Not cancelled: Ray cancels with a KeyboardInterrupt, which can land inside a native
    callback (numba's compiler) and crash the worker loudly. Their results are fetched, or Ray
    reports each failure nobody fetched as an error of its own. Those still running after the
    wait die with Ray, and :func:`remove_worker_temps` removes what they were writing."""
    if not pending or not ray.is_initialized():
        return
    with contextlib.suppress(Exception):
        ready, _ = ray.wait(pending, num_returns=len(pending), timeout=FINISH_WAIT_S)
        for ref in ready:
            with contextlib.suppress(Exception):
                ray.get(ref)


def _task_name(args: tuple) -> str:
    """A failed task's work, for its one-line error: the shard it writes (or the scan chunk)
    and its first input file."""
    work = args[0] if args else None
    if isinstance(work, plan.ShardSpec):
        first = work.samples[0].path if work.samples else "no samples"
        return f"shard {work.path} (first input {first})"
    if isinstance(work, list) and work and hasattr(work[0], "path"):
        return f"scan of {len(work)} utterance(s) (first input {work[0].path})"
    return "a Ray task"


def _ray_reason(e: BaseException) -> str:
    """The first line of what went wrong: the task's own exception, or Ray's word on the worker."""
    cause = getattr(e, "cause", None)
    if isinstance(e, ray.exceptions.RayTaskError) and cause is not None:
        text = str(cause).strip().splitlines()
        return f"the task raised {type(cause).__name__}" + (f": {text[0][:200]}" if text else "")
    text = str(e).strip().splitlines()
    return f"{type(e).__name__} after Ray's retries" + (f" ({text[0][:200]})" if text else "")
