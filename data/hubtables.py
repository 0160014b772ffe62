"""The Hub's view of a build (docs/publishing.md): one Parquet file per shard, ``hub/<shard path>.parquet``, with
the top-level columns an HF image-classification dataset has: ``image`` (the shard's PNG bytes, unchanged),
``label`` (a ``ClassLabel``), :data:`COLUMNS` and the corpus list's own columns.

Not the tars, because HF's ``webdataset`` loader names a column after a tar member's extension, so from them a label
can only be nested (``json.class_index``) or be called ``cls``. The HF features are in each table's schema metadata,
so ``load_dataset`` needs no ``map``. A table records its shard's sha256 and is rewritten only when the shard
changed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from serwild.data.manifest import Manifest
from serwild.data.records import ShardRecord
from serwild.processes import atomic

HUB_DIR = "hub"
SHARD_SHA = b"serwild_shard_sha256"  # schema metadata: the shard a table was made from
# (column, Value dtype) after image and label, in order; every one is in each sample's JSON
# (fold is null outside train, snr_db/noise for clean samples)
COLUMNS: tuple[tuple[str, str], ...] = (
    ("speaker", "string"), ("utterance", "string"), ("session", "string"), ("condition", "string"),
    ("snr_db", "float64"), ("start_s", "float64"), ("block", "int64"), ("fold", "int64"), ("noise", "string"),
    ("key", "string"),
)
RESERVED = {"image", "label", *(c for c, _ in COLUMNS)}


def table_path(shard_rel: str) -> str:
    """``ahsn/test/clean-000000.tar`` → ``hub/ahsn/test/clean-000000.parquet``."""
    return f"{HUB_DIR}/{shard_rel.removesuffix('.tar')}.parquet"


def extra_column(name: str) -> str:
    """A list's own column under its own name, or ``extra_<name>`` where that name is one of ours."""
    return f"extra_{name}" if name in RESERVED else name


def hf_features(classes: list[str], extra: list[str]) -> dict[str, Any]:
    """The columns as ``datasets.Features.to_dict()`` writes them (the schema metadata's form)."""
    out: dict[str, Any] = {"image": {"_type": "Image"}, "label": {"names": list(classes), "_type": "ClassLabel"}}
    for name, dtype in (*COLUMNS, *((extra_column(e), "string") for e in extra)):
        out[name] = {"dtype": dtype, "_type": "Value"}
    return out


def card_features(classes: list[str], extra: list[str]) -> list[dict[str, Any]]:
    """The same columns in the dataset card's YAML form (``dataset_info.features``)."""
    out: list[dict[str, Any]] = [{"name": "image", "dtype": "image"},
                                 {"name": "label", "dtype": {"class_label": {"names": dict(enumerate(classes))}}}]
    out += [{"name": name, "dtype": dtype} for name, dtype in (*COLUMNS, *((extra_column(e), "string")
                                                                          for e in extra))]
    return out


def shard_table(tar_path: str | Path, record: ShardRecord, classes: list[str], extra: list[str]) -> Any:
    """One shard (its manifest ``record``) as an Arrow table with the Hub's columns and HF's features in its
    metadata. Read as the loaders read it (its sample count, and every sample's JSON against the record and the
    class names), so no table says what the training data does not."""
    import pyarrow as pa  # here: only publishing needs it

    from serwild.data.loaders import identity, read_shards, sample_meta  # torch: publishing only

    url = str(tar_path)
    rows: dict[str, list[Any]] = {"image": [], "label": []}
    for name, _ in COLUMNS:
        rows[name] = []
    for e in extra:
        rows[extra_column(e)] = []
    for sample in read_shards([{"url": url}], {url: record.count}):
        meta = sample_meta(sample, classes, identity(record))
        key = sample["__key__"]
        rows["image"].append({"bytes": sample["png"], "path": f"{key}.png"})
        rows["label"].append(meta["class_index"])
        for name, _ in COLUMNS:
            rows[name].append(key if name == "key" else meta.get(name))
        for e in extra:
            rows[extra_column(e)].append((meta.get("extra") or {}).get(e))
    arrow = {"string": pa.string(), "float64": pa.float64(), "int64": pa.int64()}
    types = {"image": pa.struct([("bytes", pa.binary()), ("path", pa.string())]), "label": pa.int64(),
             **{name: arrow[dtype] for name, dtype in COLUMNS},
             **{extra_column(e): pa.string() for e in extra}}
    schema = pa.schema([(name, types[name]) for name in rows], metadata={
        b"huggingface": json.dumps({"info": {"features": hf_features(classes, extra)}}).encode(),
        SHARD_SHA: record.sha256.encode()})
    return pa.table({name: pa.array(values, type=types[name]) for name, values in rows.items()}, schema=schema)


def _made_from(path: Path) -> str | None:
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, ValueError):  # cut or not Parquet: made again
        return None
    found = meta.get(SHARD_SHA)
    return found.decode() if found else None


def write_tables(build: str | Path, manifest: Manifest) -> tuple[int, int]:
    """``hub/…parquet`` for every shard of the build whose table is missing or was made from other bytes; returns
    (written, kept)."""
    import pyarrow.parquet as pq

    root = Path(build)
    extra = list(manifest.extra_columns)
    written = kept = 0
    for r in manifest.shards:
        out = root / table_path(r.path)
        if out.is_file() and _made_from(out) == r.sha256:
            kept += 1
            continue
        table = shard_table(root / r.path, r, manifest.classes(r.dataset), extra)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_write(out) as f:
            pq.write_table(table, f, compression="none")  # PNG bytes do not compress further
        written += 1
    return written, kept
