"""Upload a finished build so that strangers can stream it: a folder, ``file://``, ``s3://`` or
``hf://datasets/<user>/<repo>`` (with huggingface_hub), through fsspec.

Order is what keeps readers safe: the local build is verified first; then the shards, the other metadata, the hub
card (README.md) and **manifest.json last**, so a reader never meets a manifest whose shards are not all there; a
destination's manifest of another build goes before any of its shards is overwritten. Reruns, ``--replace``,
portable paths and the final check: docs/publishing.md. No torch here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serwild.data import hubtables
from serwild.data.build import open_build
from serwild.data.fetch import (
    OBJECT_STORES,
    READ_CHUNK,
    NotFound,
    RemoteError,
    RemoteOptions,
    classify,
    filesystem,
    split_url,
)
from serwild.data.manifest import MANIFEST, Manifest, load_manifest
from serwild.data.remote import open_location, safe_relpath
from serwild.errors import UsageError
from serwild.processes import atomic
from serwild.text import portable_json

CARD = "README.md"
NOT_PUBLISHED = ("build-log.jsonl",)  # the builder's own log: paths and hosts of the machine that built it


@dataclass(frozen=True)
class Published:
    """What one :func:`publish` did."""

    uploaded: tuple[str, ...]
    kept: tuple[str, ...]  # already at the destination, same bytes
    shards: int
    samples: int


def refuse_remote_out(out: str) -> None:
    """``serwild build out=s3://…``: a build writes a folder; say which command uploads it."""
    scheme = out.split("://", 1)[0].lower() if "://" in out else ""
    if scheme and scheme != "file":
        raise UsageError(f"out={out}: a build is written to a local folder; build there, then upload it with "
                         f"`serwild publish <folder> {out}` (shards first, manifest last, resumable)")


def _destination(dest: str, opts: RemoteOptions) -> tuple[Any, str, str]:
    """(fsspec filesystem, root path in it, the URL readers open) of ``dest``."""
    scheme = dest.split("://", 1)[0].lower() if "://" in dest else ""
    if scheme in OBJECT_STORES:
        location = open_location(dest, opts)  # checks the URL (bucket present, no query)
        protocol, root = split_url(location.base)
        return filesystem(protocol, opts), root.rstrip("/"), location.base
    if scheme not in ("", "file"):
        raise UsageError(f"{dest}: publish writes to a folder, file://, {', '.join(s + '://' for s in OBJECT_STORES)}"
                         " (http(s):// is read-only: upload with the service's own tool)")
    import fsspec.implementations.local

    root = str(Path(open_location(dest).base).resolve())
    return fsspec.implementations.local.LocalFileSystem(), root, root


@dataclass(frozen=True)
class Upload:
    """One file of the build as it is published: a shard from its file, a metadata file as bytes."""

    rel: str
    size: int
    sha256: str
    data: bytes | None = None  # None: the local file as it is


def _files(build: Path, manifest: Manifest) -> list[Upload]:
    """The uploads in order: shards, their Parquet tables, metadata, the card, the manifest. The manifest and the
    rejects go out portable (:func:`portable`): a stranger's copy names no folder of this machine."""
    shards = manifest.shards
    files = [Upload(r.path, r.bytes, r.sha256) for r in shards]
    tables = [build / hubtables.table_path(r.path) for r in shards]  # the Hub's view, where written
    files += [Upload(str(t.relative_to(build)), t.stat().st_size, _sha256(t)) for t in tables if t.is_file()]
    others = sorted(p.name for p in build.iterdir() if p.is_file() and not p.name.startswith(".")
                    and p.name not in (MANIFEST, CARD, *NOT_PUBLISHED) and ".tmp" not in p.name)
    roots = _local_roots(manifest)
    for name in [*others, *([CARD] if (build / CARD).is_file() else []), MANIFEST]:
        safe_relpath(name)
        if name in PORTABLE:
            data = PORTABLE[name]((build / name).read_bytes(), roots)
            files.append(Upload(name, len(data), hashlib.sha256(data).hexdigest(), data))
        else:
            files.append(Upload(name, (build / name).stat().st_size, _sha256(build / name)))
    return files


def _local_roots(manifest: Manifest) -> list[Path]:
    """The build's input folders (corpus root, noise folder), absolute: paths under them are
    published relative to them."""
    cfg = manifest.config
    found = [(cfg.get("corpus") or {}).get("root"), (cfg.get("noise") or {}).get("dir")]
    return [Path(f).resolve() for f in found if isinstance(f, str) and f]


def _portable_manifest(data: bytes, roots: list[Path]) -> bytes:
    """The manifest with its config's absolute paths made portable (the shard records are
    relative already; the fingerprint covers the records and classes, not the config)."""
    m = json.loads(data)
    m["config"] = portable_json(m.get("config") or {}, roots)
    return (json.dumps(m, indent=1) + "\n").encode()


def _portable_rejects(data: bytes, roots: list[Path]) -> bytes:
    lines = [json.dumps(portable_json(json.loads(ln), roots), sort_keys=True) for ln in data.splitlines() if ln]
    return "".join(ln + "\n" for ln in lines).encode()


PORTABLE = {MANIFEST: _portable_manifest, "rejects.jsonl": _portable_rejects}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _remote_sha256(fs: Any, path: str, info: dict[str, Any]) -> str:
    """The sha256 a destination holds: the HF Hub's LFS sha256 (the Hub computes it), else the
    object streamed (an S3 ``sha256`` metadata field is written by whoever uploads: not evidence)."""
    lfs = info.get("lfs") or {}
    if isinstance(lfs, dict) and lfs.get("sha256"):
        return str(lfs["sha256"])
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK * 16):
            h.update(chunk)
    return h.hexdigest()


def _already_there(fs: Any, path: str, size: int, sha256: str) -> bool:
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return False
    return int(info.get("size") or 0) == size and _remote_sha256(fs, path, info) == sha256


def _upload(fs: Any, build: Path, up: Upload, path: str) -> None:
    """One file to ``path``: on S3 with its sha256 recorded (for readers; a rerun reads the bytes
    back); in a folder through a temp file and a rename (a kill leaves no cut file there)."""
    if _is_local(fs):
        fs.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic.atomic_write(path) as f:  # a temp, removed on any error
            if up.data is not None:
                f.write(up.data)
            else:
                with open(build / up.rel, "rb") as src:
                    shutil.copyfileobj(src, f, 1 << 20)
        return
    extra = {"Metadata": {"sha256": up.sha256}} if getattr(fs, "protocol", None) in ("s3", ("s3", "s3a")) else {}
    if up.data is not None:
        fs.pipe_file(path, up.data, **extra)
    else:
        fs.put_file(str(build / up.rel), path, **extra)


def _is_local(fs: Any) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def _refuse_links(root: Path) -> None:
    """A folder destination holding a symbolic link (a folder or a file): writing there would
    put the build wherever the link points."""
    if not root.exists():
        return
    for top, dirs, names in os.walk(root):
        for name in (*dirs, *names):
            if os.path.islink(os.path.join(top, name)):
                link = Path(top, name).relative_to(root)
                raise UsageError(f"{root}: {link} is a symbolic link; publish never writes through a link it did "
                                 "not make: remove it, or publish to another folder")


def _others(fs: Any, root: str, ours: set[str]) -> list[str]:
    """Files under ``root`` that are not this build's (relative paths, sorted): another build's
    shards, or anything else. A live writer's temp file is not counted."""
    try:
        found = fs.find(root)
    except FileNotFoundError:
        return []
    rels = (str(p)[len(root):].lstrip("/") for p in found)
    hub = {".gitattributes"}  # every Hub repository has one: the Hub's, not another build's
    return sorted(r for r in rels if r and r not in ours and r not in hub and not atomic.TEMP_NAME.match(Path(r).name))


def publish(build_dir: str | Path, dest: str, options: RemoteOptions | None = None,
            say: Callable[[str], None] = print, replace: bool = False,
            prepare: Callable[[Path, Manifest], None] | None = None) -> Published:
    """Upload ``build_dir`` to ``dest`` (see the module docstring); one line per file to ``say``.
    ``prepare(build, manifest)`` runs once the build has verified, before anything is listed:
    ``serwild publish`` writes the Hub's Parquet view there (``builder.hubcard.write_hub_view``)."""
    opts = options or RemoteOptions()
    build = Path(build_dir)
    opened = open_build(build)
    manifest, problems = opened.manifest, opened.verify()
    bad = [p for p in problems if not p.startswith("extra: ")]
    if bad:
        raise UsageError(f"{build} fails its own verify ({bad[0]}{f', and {len(bad) - 1} more' if bad[1:] else ''})"
                         f": run `serwild verify {build}` and rebuild before publishing")
    fs, root, url = _destination(dest, opts)
    if prepare is not None:
        prepare(build, manifest)
    files = _files(build, manifest)
    try:
        fs.invalidate_cache()  # the destination as it is now, not as a cached listing of an earlier run saw it
        if _is_local(fs):
            _refuse_links(Path(root))
            atomic.remove_stale_temps(root, recursive=True)
        others = _others(fs, root, {f.rel for f in files})
        if others and not replace:
            raise UsageError(f"{dest} holds {len(others)} file(s) that are not this build's (e.g. {others[0]}): "
                             "publish to an empty destination, or pass --replace to delete them")
        todo = [f for f in files if not _already_there(fs, f"{root}/{f.rel}", f.size, f.sha256)]
        if todo and any(f.rel == MANIFEST for f in todo) and fs.exists(f"{root}/{MANIFEST}"):
            # Its shards are about to be replaced: better no manifest for a while than a wrong one.
            fs.rm_file(f"{root}/{MANIFEST}")
            say(f"publish: removed {url.rstrip('/')}/{MANIFEST} (another build's) until the new shards are up")
        for rel in others:
            fs.rm_file(f"{root}/{rel}")
        if others:
            say(f"publish: deleted {len(others)} file(s) of another build (--replace)")
        for f in todo:
            _upload(fs, build, f, f"{root}/{f.rel}")
            say(f"uploaded {f.rel} ({f.size} bytes)")
    except (RemoteError, UsageError):
        raise
    except Exception as e:  # fsspec backends raise their own errors: one line naming the destination
        raise _one_line(e, url, opts) from None
    kept = tuple(f.rel for f in files if f.rel not in {t.rel for t in todo})
    problems = open_location(url, opts).verify(load_manifest(url, opts).shards)
    if problems:
        raise UsageError(f"{url}: published, but {len(problems)} shard(s) do not verify there ({problems[0]})")
    return Published(tuple(f.rel for f in todo), kept, len(manifest.shards), manifest.samples)


def _one_line(e: BaseException, url: str, opts: RemoteOptions) -> RemoteError:
    # the readers' wording (classify) for the same failures
    if isinstance(e, FileNotFoundError):
        return NotFound(f"{url}: {e.strerror or e} (does the bucket exist? publish does not create buckets)")
    verdict = classify(e, opts)
    text = verdict[1] if verdict else f"{type(e).__name__}: {e}"
    return RemoteError(f"{url}: {text.splitlines()[0] if text else type(e).__name__}")
