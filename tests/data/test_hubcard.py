"""The hub card (README.md at the build root): its YAML against the real shards, HF
``datasets`` loading the build folder, and the card's own load snippets, run."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from serwild.builder.hubcard import SAMPLE_FIELDS, card_front_matter, readme, split_globs, split_shards, write_hub_view
from serwild.cli import main
from serwild.data import hubtables
from serwild.data.records import ShardRecord
from tests.data.tinybuild import SNR_DB, card_build, manifest_of  # noqa: F401 - fixture

# Before `datasets` (and huggingface_hub) read them at import: nothing here may go online.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

CONDITIONS = ["clean"] + [f"snr{v.replace('.', 'p')}" for v in SNR_DB.strip("[]").split(",")]
# Clean train, validation and test under the plain names; each noisy condition its own three
SPLITS = [f"{part}{suffix}" for part in ("train", "validation", "test")
          for suffix in ["", *(f"_{c}" for c in CONDITIONS[1:])]]


@pytest.fixture
def hub_build(card_build: Path, tmp_path: Path) -> Path:  # noqa: F811 - fixture use
    """A copy of the card build, with the README.md the builder wrote."""
    out = Path(shutil.copytree(card_build, tmp_path / "build"))
    assert (out / "README.md").read_text() == readme(manifest_of(out))
    return out


@pytest.fixture
def hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """HF ``datasets`` with every cache under tmp_path and no network."""
    datasets = pytest.importorskip("datasets")
    for name in ("HF_DATASETS_CACHE", "DOWNLOADED_DATASETS_PATH", "EXTRACTED_DATASETS_PATH", "HF_MODULES_CACHE"):
        monkeypatch.setattr(datasets.config, name, tmp_path / "hf" / name.lower())
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    datasets.disable_progress_bars()
    yield datasets
    datasets.enable_progress_bars()


def _front_matter(text: str) -> dict:
    m = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert m, "no YAML front matter"
    return yaml.safe_load(m.group(1))


def test_front_matter_declares_configs_splits_and_every_field(card_build: Path) -> None:  # noqa: F811
    m = manifest_of(card_build)
    meta = _front_matter(card_front_matter(m))
    assert [c["config_name"] for c in meta["configs"]] == ["ahsn", "aesn"] == list(m.datasets)
    for config, info in zip(meta["configs"], meta["dataset_info"]):
        d = config["config_name"]
        assert info["config_name"] == d
        assert [f["split"] for f in config["data_files"]] == SPLITS
        assert {f["split"]: f["path"] for f in config["data_files"]} == split_globs(m, d)
        # every shard of the dataset in exactly one split, counts as in the manifest
        by_split = split_shards(m, d)
        assert sorted(s.path for recs in by_split.values() for s in recs) == \
            sorted(s.path for s in m.shards if s.dataset == d)
        assert {s["name"]: s["num_examples"] for s in info["splits"]} == {
            (part if c == "clean" else f"{part}_{c}"): sum(s.count for s in m.shards if s.dataset == d
                                                           and s.split == part and s.condition == c)
            for part in ("train", "validation", "test") for c in CONDITIONS}
        columns = {f["name"]: f for f in info["features"]}
        assert list(columns) == ["png", "json", "__key__", "__url__"]
        assert columns["png"]["dtype"] == {"image": {"mode": "RGB"}}
        typed = {f["name"]: f["dtype"] for f in columns["json"]["struct"]}
        names = {str(i): c for i, c in enumerate(m.classes(d))}
        assert typed == {**SAMPLE_FIELDS, "class_index": {"class_label": {"names": names}}}
        assert "null" not in typed.values()
    # the card types exactly the fields the shards carry
    keys = set()
    for shard in m.shards:
        with tarfile.open(card_build / shard.path) as tf:
            for member in tf:
                if member.name.endswith(".json"):
                    keys.add(tuple(sorted(json.loads(tf.extractfile(member).read()))))  # type: ignore[union-attr]
    assert keys == {tuple(sorted(SAMPLE_FIELDS))}


def test_split_shards_refuses_a_shard_no_split_matches(card_build: Path) -> None:  # noqa: F811
    m = manifest_of(card_build)
    stray = dataclasses.replace(m.shards[0], dataset="ahsn", path="ahsn/valid/clean-000000.tar")
    m = dataclasses.replace(m, shards=(*m.shards, stray))
    with pytest.raises(ValueError, match="ahsn/valid/clean-000000.tar matches 0 card splits"):
        split_shards(m, "ahsn")


def test_readme_body_counts_and_snippets(card_build: Path) -> None:  # noqa: F811
    m = manifest_of(card_build)
    text = readme(m)
    assert text.startswith(card_front_matter(m))
    n = sum(s.count for s in m.shards if s.path.startswith("aesn/test/snr7p5-"))
    assert f"| aesn | test_snr7p5 | `aesn/test/snr7p5-*.tar` | {n} |" in text
    assert [h for h in re.findall(r"^### (.+)$", text, re.M) if h not in m.datasets] == \
        ["Plain webdataset", "Hugging Face datasets", "serwild"]
    assert len(re.findall(r"^```python$", text, re.M)) == 3


def _loaded(hf, folder: Path, m: dict, d: str):
    """``load_dataset(folder, d)``, its splits and their row counts checked against the manifest."""
    ds = hf.load_dataset(str(folder), d)
    assert list(ds) == SPLITS
    for split, recs in split_shards(m, d).items():
        assert ds[split].num_rows == sum(s.count for s in recs) > 0
    return ds


def test_load_dataset_reads_the_build_folder(hub_build: Path, hf) -> None:
    m = manifest_of(hub_build)
    for d in m.datasets:
        ds = _loaded(hf, hub_build, m, d)
        features = ds["train"].features
        assert features["png"] == hf.Image(mode="RGB")
        json_types = features["json"]
        for name in ("snr_db", "noise_gain", "noise_offset_s", "start_s"):
            assert json_types[name] == hf.Value("float64"), name
        for name in ("noise", "label", "condition", "utterance"):
            assert json_types[name] == hf.Value("string"), name
        assert json_types["fold"] == hf.Value("int64")
        assert json_types["class_index"].names == m.classes(d)
        clean, noisy = ds["test"][0], ds[f"test_{CONDITIONS[1]}"][0]
        assert {row["condition"] for row in ds["train"]["json"]} == {"clean"}  # never a silent mixture
        assert {row["condition"] for row in ds[f"train_{CONDITIONS[1]}"]["json"]} == {CONDITIONS[1]}
        image = np.asarray(clean["png"])
        assert clean["png"].mode == "RGB" and image.shape == (257, 259, 3) and image.dtype == np.uint8
        assert clean["json"]["snr_db"] is None and clean["json"]["noise"] is None and clean["json"]["fold"] is None
        assert noisy["json"]["snr_db"] == 15.0 and isinstance(noisy["json"]["noise"], str)
        assert json_types["class_index"].int2str(noisy["json"]["class_index"]) == noisy["json"]["label"]
        assert {row["fold"] for row in ds["train"]["json"]} == {0, 1}


def _run_snippets(folder: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Section title → what the card's python block printed, run from ``folder``."""
    text = (folder / "README.md").read_text()
    snippets = {}  # section title → its python block
    for section in re.split(r"^### ", text, flags=re.M)[1:]:
        title, _, body = section.partition("\n")
        for code in re.findall(r"^```python\n(.*?)^```$", body, re.M | re.S):
            snippets[title] = code
    assert list(snippets) == ["Plain webdataset", "Hugging Face datasets", "serwild"]
    monkeypatch.chdir(folder)
    outputs = {}
    for title, code in snippets.items():
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"README.md ({title})", "exec"), {"__name__": "__snippet__"})
        outputs[title] = out.getvalue()
    return outputs


def test_card_snippets_run(hub_build: Path, hf, monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = _run_snippets(hub_build, monkeypatch)
    assert outputs["Plain webdataset"].split()[1:] == ["clean", "None"]
    assert "test_snr15: Dataset" in outputs["Hugging Face datasets"]
    assert outputs["Hugging Face datasets"].rstrip().endswith("snr15")
    n_test = sum(s.count for s in manifest_of(hub_build).shards if s.path.startswith("ahsn/test/"))
    assert outputs["serwild"].splitlines() == ["test shards match the manifest", f"{n_test} test samples"]


def test_the_card_says_what_the_card_section_and_the_corpus_kind_say(card_build: Path) -> None:  # noqa: F811
    """The Hub's fields (licence, its link, language, source datasets, a BibTeX citation) from the
    ``card:`` section, else from what serwild knows of the corpus kind; a CSV corpus is never given
    IEMOCAP's licence. The card parses with huggingface_hub's own DatasetCard."""
    hub = pytest.importorskip("huggingface_hub")
    m = manifest_of(card_build)
    csv = dataclasses.replace(m, config={**m.config, "corpus": {**m.config["corpus"], "kind": "csv"}})
    card = hub.DatasetCard(readme(csv))
    assert card.data.license == "unknown" and "IEMOCAP" not in readme(csv).split("## Layout")[0]
    assert "set `card.license`" in card.text and "@article{yusuf2022noise" in card.text
    mine = dataclasses.replace(csv, config={**csv.config, "card": {
        "pretty_name": "CREMA-D noisy spectrograms", "license": "odbl", "license_link": "https://example.org/odbl",
        "language": ["en"], "source_datasets": ["crema-d"], "citation": "@article{cao2014crema, title={CREMA-D}}",
        "description": "91 actors, six emotions."}})
    card = hub.DatasetCard(readme(mine))
    assert (card.data.license, card.data.license_link, card.data.language, card.data.source_datasets,
            card.data.pretty_name) == ("odbl", "https://example.org/odbl", ["en"], ["crema-d"],
                                       "CREMA-D noisy spectrograms")
    assert "```bibtex\n@article{cao2014crema, title={CREMA-D}}\n```" in card.text and "91 actors" in card.text
    iemocap = dataclasses.replace(m, config={**m.config, "corpus": {**m.config["corpus"], "kind": "iemocap"}})
    card = hub.DatasetCard(readme(iemocap))
    assert (card.data.license, card.data.language) == ("other", ["en"]) and "busso2008iemocap" in card.text
    assert card.data.license_link.startswith("https://sail.usc.edu/")


def _tar_samples(path: Path) -> dict[str, dict]:
    with tarfile.open(path) as tf:
        return {m.name.removesuffix(".json"): json.loads(tf.extractfile(m).read())  # type: ignore[union-attr]
                for m in tf if m.name.endswith(".json")}


def test_the_hub_view_has_top_level_columns_and_the_expected_splits(hub_build: Path, hf,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """write_hub_view (what `serwild publish` does first): a Parquet table per shard with top-level
    image, label (ClassLabel), speaker, condition …; train/validation/test clean, noisy splits
    apart; made once, kept while the shard is unchanged; the card reads them, and its snippets run."""
    m = manifest_of(hub_build)
    assert write_hub_view(hub_build, m) == (len(m.shards), 0)
    assert write_hub_view(hub_build, m) == (0, len(m.shards))
    for d in m.datasets:
        ds = _loaded(hf, hub_build, m, d)
        f = ds["validation"].features
        assert list(f) == ["image", "label", *(c for c, _ in hubtables.COLUMNS)]
        assert f["image"] == hf.Image() and f["label"] == hf.ClassLabel(names=m.classes(d))
        assert f["snr_db"] == hf.Value("float64") and f["fold"] == hf.Value("int64")
        assert set(ds["train"]["condition"]) == {"clean"} and set(ds[f"test_{CONDITIONS[1]}"]["condition"]) == {
            CONDITIONS[1]}
        # every row is its tar sample: the same label, speaker, start and PNG bytes
        shard = next(s for s in m.shards if s.dataset == d and s.split == "test" and s.count)
        meta = _tar_samples(hub_build / shard.path)
        rows = ds["test"].cast_column("image", hf.Image(decode=False))
        assert sum(row["key"] in meta for row in rows) == shard.count
        for row in rows:
            if row["key"] in meta:
                want = meta[row["key"]]
                assert (f["label"].int2str(row["label"]), row["speaker"], row["start_s"], row["snr_db"]) == (
                    want["label"], want["speaker"], want["start_s"], want["snr_db"])
                with tarfile.open(hub_build / shard.path) as tf:
                    assert row["image"]["bytes"] == tf.extractfile(f"{row['key']}.png").read()  # type: ignore[union-attr]
    outputs = _run_snippets(hub_build, monkeypatch)
    assert outputs["Hugging Face datasets"].rstrip().endswith("15.0")
    # what a stranger gets: the published copy loads the same way
    dest = hub_build.parent / "published"
    assert main(["publish", str(hub_build), str(dest)]) == 0
    published = hf.load_dataset(str(dest), next(iter(m.datasets)), split="validation")
    assert isinstance(published.features["label"], hf.ClassLabel) and set(published["condition"]) == {"clean"}
    # a changed shard's table is made again (it records the shard's sha256)
    table = hub_build / hubtables.table_path(m.shards[0].path)
    m = dataclasses.replace(m, shards=(dataclasses.replace(m.shards[0], sha256="0" * 64), *m.shards[1:]))
    assert write_hub_view(hub_build, m) == (1, len(m.shards) - 1) and table.is_file()


def test_a_list_s_own_columns_are_top_level_columns_of_the_hub_view(tmp_path: Path) -> None:
    """extra columns under their own names (``extra_<name>`` where a name is one of ours); a shard
    whose samples the loaders would refuse (a member missing, a label the manifest does not name)
    makes no table either."""
    import pyarrow.parquet as pq  # a dependency of serwild's (publish)

    from serwild.data.loaders import ShardError

    record = ShardRecord("ahsn/test/s.tar", "ahsn", "test", None, "clean", 1, 0, "ab" * 32)
    meta = {"label": "hap", "class_index": 1, "speaker": "s1", "utterance": "u1", "session": "x", "snr_db": None,
            "start_s": 0.0, "block": 0, "noise": None, "extra": {"intensity": "HI", "speaker": "dup"},
            **{k: getattr(record, k) for k in ("dataset", "split", "fold", "condition")}}

    def shard(name: str, members: dict[str, bytes]) -> Path:
        with tarfile.open(tmp_path / name, "w") as tf:
            for member, data in members.items():
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        return tmp_path / name

    good = shard("s.tar", {"u1_b000_clean.png": b"\x89PNG", "u1_b000_clean.json": json.dumps(meta).encode()})
    table = hubtables.shard_table(good, record, ["ang", "hap"], ["intensity", "speaker"])
    row = table.to_pylist()[0]
    assert (row["label"], row["speaker"], row["intensity"], row["extra_speaker"]) == (1, "s1", "HI", "dup")
    assert json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]["label"]["names"] == ["ang", "hap"]
    pq.write_table(table, tmp_path / "s.parquet")
    assert pq.read_schema(tmp_path / "s.parquet").metadata[hubtables.SHARD_SHA] == b"ab" * 32
    with pytest.raises(ShardError, match="lacks a png or json member"):
        hubtables.shard_table(shard("bad.tar", {"k.png": b""}), record, ["ang", "hap"], [])
    with pytest.raises(ShardError, match="where the manifest names 'ang'"):
        hubtables.shard_table(good, record, ["hap", "ang"], [])
