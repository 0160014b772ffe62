"""The build driver, :func:`run_build` (``serwild build``): corpus → scan → plan → one task per shard →
manifest.json, rejects.jsonl, README.md (docs/building.md). One build per folder at a time (a lock), and a build of
another config needs ``overwrite``. Where the tasks run is :mod:`serwild.processes.executors`. build-log.jsonl records
every shard as it is written (what a resume trusts) with the node that wrote it, and per run how many shard tasks
each node ran.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from serwild.builder import hubcard, plan, scan
from serwild.builder.config import AudioConfig
from serwild.builder.corpus import Reject, read_corpus
from serwild.builder.labels import PRESETS, resolve_views
from serwild.builder.manifest import make_manifest
from serwild.builder.shards import build_shard
from serwild.config import Config, build_identity, config_differences
from serwild.data.manifest import sha256_file
from serwild.data.publish import refuse_remote_out
from serwild.data.records import ShardRecord
from serwild.errors import UsageError
from serwild.processes import atomic, executors, lock
from serwild.progress import stage
from serwild.synth.corpus import write_synthetic_corpus

LOG = "build-log.jsonl"
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


def run_build(cfg: Config, executor: str | executors.Executor = "ray", overwrite: bool = False) -> Path:
    """Build (or resume) the shards described by ``cfg``; returns the build folder. ``executor``: "ray" (local, or
    the cluster at ``ray.address``), "serial", or an :class:`~serwild.processes.executors.Executor` of the caller's."""
    refuse_remote_out(cfg.out)  # a build writes a folder; `serwild publish` uploads it
    out = Path(cfg.out)
    atomic.require_writable(out, "the build folder", "set out= to a writable folder")
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
    plan.check_speaker_split(utts, views, cfg)
    ex = executors.open_executor(executor, cfg.ray, out) if isinstance(executor, str) else executor
    with _claim(out, cfg, overwrite), ex:
        scanned = _scan(ex, utts, rejects, cfg.audio)
        specs = plan.plan_shards(scanned, noises, cfg)
        stage("build", f"plan: {len(specs)} shard(s), {sum(len(x.samples) for x in specs)} sample(s) "
              f"from {len(scanned)} utterance(s)")
        speakers = plan.held_out_speakers(specs)
        _say_speakers(cfg.split.strategy, speakers)
        out.mkdir(parents=True, exist_ok=True)
        done, todo = _resume_state(out, specs, cfg.audio)
        _remove_strays(out, {s.path for s in specs}, cfg.datasets)
        if done:
            print(f"resume: {len(done)} shard(s) already built and verified, {len(todo)} to build",
                  file=sys.stderr)
        _build_shards(ex, out, todo, done, cfg.audio)
        records = [done[s.path] for s in specs]
        _write_rejects(out, records, rejects)
        stage("build", f"writing manifest.json, rejects.jsonl ({len(rejects)}) and README.md")
        manifest = make_manifest(cfg, [ShardRecord.from_dict(r) for r in records], rejects, scanned, speakers)
        atomic.write_json(out / "manifest.json", manifest.to_dict())
        atomic.write_text(out / "README.md", hubcard.readme(manifest))  # the one dataset card (what hubs read)
    return out


def _write_rejects(out: Path, records: list[dict], rejects: list[Reject]) -> None:
    """rejects.jsonl: the corpus's and the shard tasks' rejects, sorted; each record loses what
    the log keeps (the node that built it: a run detail, not the data's) and its rejects."""
    for r in records:
        r.pop("node", None)
        rejects.extend(Reject(**x) for x in r.pop("rejects", []))
    rejects.sort(key=lambda r: (r.stage, r.item, r.block if r.block is not None else -1, r.reason))
    atomic.write_text(out / "rejects.jsonl", "".join(json.dumps(r.to_dict(), sort_keys=True) + "\n" for r in rejects))


def _scan(ex: executors.Executor, utts: list, rejects: list[Reject], audio_cfg: AudioConfig) -> list:
    """Every utterance read once (a task per chunk): its usable blocks, in utterance order; what
    cannot be used goes into ``rejects``."""
    scanned = []
    chunks = [utts[i:i + SCAN_CHUNK] for i in range(0, len(utts), SCAN_CHUNK)]
    for finished in ex.map(scan.scan_chunk, [(c, audio_cfg) for c in chunks], "scan audio", describe_task):
        scanned.extend(finished.result[0])
        rejects.extend(finished.result[1])
    return sorted(scanned, key=lambda s: s.utt.id)


def _say_speakers(strategy: str, speakers: dict[str, dict]) -> None:
    """The held-out speakers of a speaker or session split, per dataset."""
    if strategy not in ("speaker", "session"):
        return
    for d, sp in speakers.items():
        n = sum(len(v) for v in sp.values())
        said = [f"{part} speakers {', '.join(names)} ({len(names)} of {n})"
                for part in ("test", "validation") if (names := sp.get(f"{part}_speakers"))]
        stage("build", f"split {strategy}: dataset {d}: {'; '.join(said)}")


def _build_shards(ex: executors.Executor, out: Path, todo: list[plan.ShardSpec], done: dict[str, dict],
                  audio_cfg: AudioConfig) -> None:
    """One task per shard of ``todo``; each finished shard's record goes into ``done`` and, with
    the node that built it, into the log at once (what a resume trusts), then one line per run:
    how many shard tasks each node ran. Temp shards left by attempts that died with their node
    (their retry wrote the shard) are removed."""
    nodes: Counter[str] = Counter()
    try:
        for finished in ex.map(build_shard, [(s, str(out), audio_cfg) for s in todo], "build shards", describe_task):
            record, rejects = finished.result
            done[record.path] = {**record.to_dict(), "rejects": rejects, "node": finished.node}
            nodes[finished.node] += 1
            _log_line(out, done[record.path])
    finally:  # the map is over (failed or not): no task of ours writes any more
        for sub in {spec.path.split("/")[0] for spec in todo}:
            atomic.remove_stale_temps(out / sub, recursive=True, writers_done=True)
    _log_line(out, {"shard_tasks_per_node": dict(nodes.most_common())})
    if nodes:
        stage("build", f"shard tasks per node: {', '.join(f'{n} {k}' for n, k in nodes.most_common())}")


def _log_line(out: Path, record: dict) -> None:
    atomic.append_line(out / LOG, json.dumps(record, sort_keys=True))


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
    if not (out / "manifest.json").is_file():
        return
    old, new = built_identity(out), build_identity(cfg)
    if old == new:
        return
    if not overwrite:
        what = ("a manifest.json serwild cannot read" if old is None
                else f"a build of another config ({config_differences(old, new or {})})")
        raise UsageError(f"{out} holds {what}: pass --overwrite to replace it, or set out=<another folder>")
    for name in ("manifest.json", "README.md"):
        (out / name).unlink(missing_ok=True)


def built_identity(out: Path) -> dict | None:
    """The build identity (:func:`~serwild.config.build_identity`) of the config a finished build
    in ``out`` was made from; None where its manifest.json is missing or unreadable."""
    try:
        return build_identity(json.loads((out / "manifest.json").read_text())["config"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


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
            except json.JSONDecodeError:
                continue  # a line cut by a kill: that shard is simply rebuilt
            if isinstance(rec, dict) and isinstance(rec.get("path"), str):  # not a run's per-node line
                logged[rec["path"]] = rec
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


def describe_task(args: tuple) -> str:
    """A failed task's work, for its one-line error: the shard it writes (or the scan chunk)
    and its first input file."""
    work = args[0] if args else None
    if isinstance(work, plan.ShardSpec):
        first = work.samples[0].path if work.samples else "no samples"
        return f"shard {work.path} (first input {first})"
    if isinstance(work, list) and work and hasattr(work[0], "path"):
        return f"scan of {len(work)} utterance(s) (first input {work[0].path})"
    return "a Ray task"
