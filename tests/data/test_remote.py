"""Remote builds against a real HTTP server on 127.0.0.1 (tests/data/server.py), file://
locations, the refused pipe:, and the path guard. Every server is stopped by its ``with`` (and stops
itself after its max lifetime); nothing but 127.0.0.1 is contacted."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from serwild.data.build import open_build
from serwild.data.fetch import NotFound, RemoteError, RemoteOptions
from serwild.data.manifest import MANIFEST, load_manifest
from serwild.data.remote import Location, open_location, safe_relpath
from serwild.errors import UsageError
from serwild.processes import atomic
from tests.data.server import LoopbackServer
from tests.data.tinybuild import manifest_of, tiny_build  # noqa: F401 - fixture

FAST = RemoteOptions(timeout_s=0.5, retries=2, backoff_s=0.05)


@pytest.fixture
def build_copy(tiny_build: Path, tmp_path: Path) -> Path:  # noqa: F811 - fixture use
    """A copy of the tiny build that a test may damage."""
    return Path(shutil.copytree(tiny_build, tmp_path / "build"))


def _one_line(e: BaseException) -> str:
    text = str(e)
    assert text and "\n" not in text, text
    return text


def _test_shards(m: dict, condition: str | None = None) -> list[dict]:
    return [s for s in m.shards if s.dataset == "ahsn" and s.split == "test"
            and (condition is None or s.condition == condition)]


# ----------------------------------------------------------------------------- paths and schemes


@pytest.mark.parametrize("rel", ["../../etc/passwd", "/etc/passwd", "ahsn/../../x.tar", "http://evil.example/x.tar",
                                 "file:///etc/passwd", "ahsn\\test\\x.tar", "%2e%2e/x.tar", "", "./x.tar",
                                 "ahsn//x.tar", "x.tar?y=1", "x{0..3}.tar", "a b.tar", "ahsn/test/", ".hidden"])
def test_join_refuses_anything_that_could_leave_the_base(rel: str) -> None:
    for build in (open_location("/srv/build"), open_location("http://127.0.0.1:9/b/"),
                  open_location("s3://bucket/build/")):
        with pytest.raises(RemoteError) as info:
            build.join(rel)
        assert repr(rel) in _one_line(info.value) and build.location in str(info.value)


def test_join_and_open_location_per_scheme(tmp_path: Path) -> None:
    rel = "ahsn/test/snr7p5-000000.tar"
    assert safe_relpath(rel) == rel
    assert open_location(tmp_path).join(rel) == str(tmp_path / rel)
    file_build = open_location(f"file://{tmp_path}")
    assert file_build.kind == "local" and file_build.join(rel) == str(tmp_path / rel)
    http = open_location("http://127.0.0.1:8000/pub/build")  # a trailing slash is added
    assert http.kind == "http" and http.join(rel) == f"http://127.0.0.1:8000/pub/build/{rel}"
    s3 = open_location("s3://bucket/pub/build")
    assert s3.kind == "store" and s3.join(rel) == f"s3://bucket/pub/build/{rel}" and s3.is_remote
    for bad, words in [("ftp://host/build", "s3://"), ("s3:///build", "bucket"),
                       ("pipe:cat /srv/x/{path}", "no pipe: command"),
                       ("https://h/build/?X-Amz-Signature=1", "query"), ("file://otherhost/x", "local file://")]:
        with pytest.raises(UsageError) as info:
            open_location(bad)
        assert words in _one_line(info.value) and bad in str(info.value)


def test_options_bound_the_worst_case() -> None:
    assert FAST.worst_case_s() == pytest.approx(3 * 0.5 + 0.05 + 0.1)
    assert RemoteOptions(backoff_s=4, backoff_max_s=5).delay(3) == 5
    with pytest.raises(UsageError):
        RemoteOptions(timeout_s=0)


# ----------------------------------------------------------------------------- verify


def test_verify_over_http_fetches_each_shard_into_the_cache(tiny_build: Path,  # noqa: F811
                                                                  tmp_path: Path) -> None:
    """A full verify fetches each shard once, into the cache, where a loader finds it later (a
    verify after it fetches them again: it checks the server's copy, not the cache's)."""
    m = manifest_of(tiny_build)
    with LoopbackServer(tiny_build, max_lifetime_s=30) as srv:
        build = open_location(srv.url(), dataclasses.replace(FAST, cache_dir=str(tmp_path)))
        manifest = load_manifest(build)
        assert manifest == m
        assert build.verify(manifest.shards) == []
        gets = [p for method, p, _ in srv.requests if method == "GET"]
        assert sorted(gets) == sorted([MANIFEST] + [s.path for s in m.shards])  # each exactly once
        assert all(rng is None for _, _, rng in srv.requests)
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == sorted(s.sha256 + ".tar" for s in m.shards)


def test_verify_over_a_file_url(tiny_build: Path) -> None:  # noqa: F811
    m = manifest_of(tiny_build)
    build = open_location(f"file://{tiny_build}", FAST)
    assert load_manifest(build) == m
    assert build.verify(m.shards[:3]) == []


def test_shard_cut_on_the_server_is_caught_and_named(build_copy: Path) -> None:
    m = manifest_of(build_copy)
    cut, flipped, boundary = _test_shards(m, "clean")[0], _test_shards(m, "clean")[1], _test_shards(m)[2]
    # a shard cut on disk mid-member, one with a flipped byte, one cut at a sample boundary and
    # re-terminated (a valid, shorter tar): all three caught, each named
    path = build_copy / cut.path
    path.write_bytes(path.read_bytes()[:5000])
    path = build_copy / flipped.path
    data = bytearray(path.read_bytes())
    data[700] ^= 0xFF
    path.write_bytes(bytes(data))
    _rewrite_without_last_sample(build_copy / boundary.path)
    with LoopbackServer(build_copy, max_lifetime_s=30) as srv:
        build = open_location(srv.url(), FAST)
        problems = build.verify(load_manifest(build).shards)
    assert problems[0] == f"bad: {cut.path} has 5000 bytes, manifest says {cut.bytes}"
    assert f"bad: {flipped.path} sha256 differs from the manifest" in problems
    assert any(p.startswith(f"bad: {boundary.path} ") for p in problems)
    assert len(problems) == 3
    # same verdicts as the local checker on the same files
    assert problems == open_build(build_copy).verify()


def _rewrite_without_last_sample(path: Path) -> None:
    with tarfile.open(path) as tf:
        members = [(t, tf.extractfile(t).read()) for t in tf.getmembers()]  # type: ignore[union-attr]
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for t, data in members[:-2]:
            tf.addfile(t, io.BytesIO(data))


def test_server_cutting_the_body_short_is_caught_with_an_honest_length(tiny_build: Path) -> None:  # noqa: F811
    m = manifest_of(tiny_build)
    shard = _test_shards(m)[0]
    with LoopbackServer(tiny_build, max_lifetime_s=30) as srv:
        srv.cut(shard.path, 10240)  # serves a 10240-byte file: a cut at a tar record boundary
        build = open_location(srv.url(), FAST)
        assert build.verify([shard]) == [f"bad: {shard.path} has 10240 bytes, manifest says {shard.bytes}"]


def test_a_dropped_connection_fetches_the_shard_again_whole(tiny_build: Path) -> None:  # noqa: F811
    m = manifest_of(tiny_build)
    shard = _test_shards(m)[0]
    with LoopbackServer(tiny_build, max_lifetime_s=30) as srv:
        srv.cut(shard.path, 3000, drop=True, times=1)  # full Content-Length, closed after 3000 bytes
        build = open_location(srv.url(), FAST)
        assert build.verify([shard]) == []
        assert [r for r in srv.requests if r[1] == shard.path] == [("GET", shard.path, None)] * 2


def test_a_connection_that_keeps_dropping_ends_in_one_line(tiny_build: Path) -> None:  # noqa: F811
    m = manifest_of(tiny_build)
    shard = _test_shards(m)[0]
    with LoopbackServer(tiny_build, max_lifetime_s=30) as srv:
        srv.cut(shard.path, 3000, drop=True)
        build = open_location(srv.url(), FAST)
        with pytest.raises(RemoteError) as info:
            build.check(shard)
        text = _one_line(info.value)
        assert text.startswith(srv.url(shard.path) + ": ")
        assert f"after 3000 of {shard.bytes} bytes" in text and f"{FAST.retries + 1} attempts" in text
        assert srv.count(shard.path) == FAST.retries + 1


def test_transient_errors_are_retried_and_missing_objects_are_not(tiny_build: Path) -> None:  # noqa: F811
    m = manifest_of(tiny_build)
    with LoopbackServer(tiny_build, max_lifetime_s=30) as srv:
        build = open_location(srv.url(), FAST)
        srv.fail(MANIFEST, 503, times=FAST.retries)
        assert load_manifest(build) == m and srv.count(MANIFEST) == FAST.retries + 1
        srv.fail(MANIFEST, 503, times=FAST.retries + 1)
        with pytest.raises(RemoteError) as info:
            load_manifest(build)
        assert _one_line(info.value) == (f"{srv.url(MANIFEST)}: HTTP 503 Service Unavailable "
                                         f"(gave up after {FAST.retries + 1} attempts, "
                                         f"{str(info.value).rsplit(', ', 1)[1]}")
        missing = dataclasses.replace(_test_shards(m)[0], path="ahsn/test/clean-999999.tar")
        before = len(srv.requests)
        assert build.verify([missing]) == ["missing: ahsn/test/clean-999999.tar"]
        assert len(srv.requests) == before + 1  # a 404 is not retried
        with pytest.raises(NotFound) as nf:
            load_manifest(open_location(srv.url("no/such/build/"), FAST))
        assert "serwild build" in _one_line(nf.value)


def test_quick_verify_asks_sizes_only(tiny_build: Path) -> None:  # noqa: F811
    m = manifest_of(tiny_build)
    shards = _test_shards(m)
    with LoopbackServer(tiny_build, max_lifetime_s=30) as srv:
        srv.cut(shards[0].path, 512)
        build = open_location(srv.url(), FAST)
        assert build.verify(shards, full=False) == [
            f"bad: {shards[0].path} has 512 bytes, manifest says {shards[0].bytes}"]
        assert {method for method, _, _ in srv.requests} == {"HEAD"}


def test_manifest_naming_a_path_outside_the_build_is_refused(build_copy: Path) -> None:
    m = json.loads((build_copy / MANIFEST).read_text())
    m["shards"][1]["path"] = "../../etc/passwd"
    (build_copy / MANIFEST).write_text(json.dumps(m))
    with LoopbackServer(build_copy, max_lifetime_s=30) as srv:
        with pytest.raises(UsageError) as info:
            load_manifest(open_location(srv.url(), FAST))
        text = _one_line(info.value)
        assert text.startswith(srv.url(MANIFEST)) and "'../../etc/passwd'" in text and "record 1" in text
        assert [p for _, p, _ in srv.requests] == [MANIFEST]  # nothing else was asked for
    with pytest.raises(UsageError, match="etc/passwd"):
        load_manifest(open_location(build_copy))


def test_redirects_are_followed_to_http_only(tiny_build: Path) -> None:  # noqa: F811
    m = manifest_of(tiny_build)
    shard = _test_shards(m)[0]
    with LoopbackServer(tiny_build, max_lifetime_s=30) as srv:
        srv.redirect("moved/" + shard.path, srv.url(shard.path))
        srv.redirect("ftp/" + shard.path, "ftp://127.0.0.1:9/x.tar")
        build = open_location(srv.url(), FAST)
        assert build.check(dataclasses.replace(shard, path="moved/" + shard.path)) is None
        with pytest.raises(RemoteError) as info:
            build.read_bytes("ftp/" + shard.path)
        assert _one_line(info.value) == f"{srv.url('ftp/' + shard.path)}: refusing a redirect to ftp://127.0.0.1:9/x.tar"


# ----------------------------------------------------------------------------- dead servers


def test_a_server_that_stops_answering_fails_within_the_timeout(tiny_build: Path) -> None:  # noqa: F811
    m = manifest_of(tiny_build)
    with LoopbackServer(tiny_build, max_lifetime_s=30) as srv:
        build = open_location(srv.url(), FAST)
        manifest = load_manifest(build)
        srv.stall_after(len(srv.requests) + 2)  # two more shards, then silence
        with pytest.raises(RemoteError) as info:
            build.verify(manifest.shards)
        text = _one_line(info.value)
        third = m.shards[2].path
        assert text.startswith(f"{srv.url(third)}: no answer within 0.5 s (gave up after 3 attempts")
        # Bounded: one request per attempt (each ends at the read timeout), then nothing more was asked.
        assert srv.count(third) == FAST.retries + 1
        assert [p for _, p, _ in srv.requests[-(FAST.retries + 1):]] == [third] * (FAST.retries + 1)
    assert not srv.running


def test_a_closed_port_fails_fast(tiny_build: Path) -> None:  # noqa: F811
    with LoopbackServer(tiny_build, max_lifetime_s=30) as srv:
        url = srv.url()
    with pytest.raises(RemoteError) as info:
        load_manifest(open_location(url, FAST))
    # Fast: the refusal is recognised as such, not waited out as a silent server.
    text = _one_line(info.value)
    assert "refused" in text.lower() and url in text and "no answer within" not in text


def test_the_server_helper_stops_itself(tiny_build: Path) -> None:  # noqa: F811
    srv = LoopbackServer(tiny_build, max_lifetime_s=0.3).start()
    url = srv.url(MANIFEST)
    assert open_location(url.rsplit("/", 1)[0], FAST).read_bytes(MANIFEST)
    deadline = time.monotonic() + 5
    while srv.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not srv.running
    with pytest.raises(RemoteError):
        open_location(url.rsplit("/", 1)[0], RemoteOptions(timeout_s=0.5, retries=0)).read_bytes(MANIFEST)


# ----------------------------------------------------------------------------- webdataset


def test_loaders_read_copies_fetched_once_and_never_hang(tiny_build: Path, tmp_path: Path) -> None:  # noqa: F811
    """The loaders read a remote build's shards from the cache: each fetched once, checked by
    sha256, and read again from disk by a later epoch; a server that stalls is one line."""
    loaders = pytest.importorskip("serwild.data.loaders")
    m = manifest_of(tiny_build)
    shards = _test_shards(m)
    with LoopbackServer(tiny_build, max_lifetime_s=30) as srv:
        opts = dataclasses.replace(FAST, cache_dir=str(tmp_path / "cache"))
        remote = loaders.shard_set(open_location(srv.url(), opts), shards)
        expected = dict(zip(remote.urls, (s.count for s in shards)))
        for _epoch in range(2):
            samples = list(loaders.read_shards([{"url": u} for u in remote.urls], expected, remote.remote))
            assert len(samples) == sum(s.count for s in shards)
        assert {json.loads(x["json"])["condition"] for x in samples} == set(m.conditions)
        assert sorted(p for _, p, _ in srv.requests) == sorted(s.path for s in shards)  # once each
        cached = sorted(p.name for p in (tmp_path / "cache").glob("*.tar"))
        assert cached == sorted(s.sha256 + ".tar" for s in shards)
        cold = dataclasses.replace(remote.remote, options=dataclasses.replace(opts, cache_dir=str(tmp_path / "c2")))
        asked = len(srv.requests)
        srv.stall_after(asked + 1)
        with pytest.raises(RemoteError) as info:
            for _ in loaders.read_shards([{"url": u} for u in remote.urls], expected, cold):
                pass
        assert _one_line(info.value).startswith(f"{remote.urls[1]}: no answer within 0.5 s")
        assert isinstance(info.value, OSError)  # what tar readers expect
        # Never hangs: after the first shard, one request per attempt at the second, then the error.
        second = shards[1].path
        assert [p for _, p, _ in srv.requests[asked + 1:]] == [second] * (FAST.retries + 1)
    assert not [p for p in (tmp_path / "c2").iterdir() if atomic.TEMP_NAME.match(p.name)]  # no temp copy left


def test_build_is_a_plain_value() -> None:
    b = open_location("http://127.0.0.1:1/x/")
    assert b == Location("http://127.0.0.1:1/x/", "http", "http://127.0.0.1:1/x/") and b.is_remote


def test_reader_side_imports_no_torch() -> None:
    """``serwild verify`` and ``from serwild.data import open_build`` stay cheap: no torch (or
    webdataset) until a loader is asked for."""
    code = ("import sys; import serwild.data, serwild.cli.verify, serwild.config; "
            "from serwild.data import open_build; "
            "print(sorted(m for m in ('torch', 'webdataset') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
