"""Plan every output sample before anything is rendered (docs/building.md).

The driver decides, deterministically, each block's split, fold and shard, and each noisy copy's noise file and
offset (from a seed per sample). A shard task is then a pure function of its :class:`ShardSpec`: the same inputs and
seed give the same bytes whatever the number of workers, and a resume skips a shard whose spec digest matches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import warnings
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass

import numpy as np

from serwild import seeds
from serwild.builder.corpus import Utterance
from serwild.builder.labels import PRESETS, View, resolve_views
from serwild.builder.scan import NoiseFile, ScannedUtterance
from serwild.config import Config, ConfigError
from serwild.errors import UsageError

PLAN_FORMAT = 3  # bump when a change to rendering or layout must invalidate old shards (3: PNG Z_RLE)


@dataclass(frozen=True)
class SampleSpec:
    key: str
    dataset: str
    label: str
    class_index: int
    utterance: str
    speaker: str
    session: str
    path: str  # absolute audio path
    source: str  # relative, for metadata
    native_sr: int
    block: int
    condition: str
    snr_db: float | None
    noise: str | None  # noise file name, relative to noise.dir
    noise_path: str | None
    noise_offset: int | None  # in samples at the target rate
    split: str
    fold: int | None
    segment: tuple[float, float] | None = None  # seconds into the file (None: the whole file)
    extra: tuple[tuple[str, str], ...] = ()  # the list's extra columns (name, value)


# Fields added to SampleSpec after PLAN_FORMAT 3, with the value that means "as before": left out of
# the digest at that value, so a build that does not use them keeps its digests (and resumes).
LATER_FIELDS: dict[str, object] = {"segment": None, "extra": ()}


@dataclass(frozen=True)
class ShardSpec:
    path: str  # relative to the build dir
    dataset: str
    split: str
    fold: int | None
    condition: str
    snr_db: float | None
    samples: tuple[SampleSpec, ...]

    def digest(self, render: dict) -> str:
        """Changes whenever anything that shapes this shard's bytes changes."""
        shard = asdict(self)
        shard["samples"] = [{k: v for k, v in x.items() if k not in LATER_FIELDS or v != LATER_FIELDS[k]}
                            for x in shard["samples"]]
        payload = {"format": PLAN_FORMAT, "render": render, "shard": shard}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def condition_name(snr: float | None) -> str:
    """``clean``, ``snr15``, ``snr7p5``: no dots, since WebDataset splits keys at the first."""
    if snr is None:
        return "clean"
    text = f"{snr:g}".replace("-", "m").replace(".", "p")
    return f"snr{text}"


# ----------------------------------------------------------------------------- splits

Unit = tuple[str, int]  # (utterance id, block); block -1 stands for "every block"


def assign_splits(utts: list[ScannedUtterance], cfg: Config, dataset: str = "",
                  view: View | None = None) -> dict[tuple[str, int], tuple[str, int | None]]:
    """(utterance, block) → (split, fold) for one dataset's utterances (labels already its class names)."""
    sp = cfg.split
    by_id = {s.utt.id: s for s in utts}
    if sp.strategy == "block":
        units = [(s.utt.id, b) for s in utts for b in s.blocks]
    else:
        units = [(s.utt.id, -1) for s in utts]
    labels = [by_id[u].utt.label for u, _ in units]
    if sp.strategy in ("session", "speaker"):
        held = (set(sp.test_sessions) if sp.strategy == "session"
                else set(test_speakers([s.utt for s in utts], sp.test_fraction, cfg.seed, dataset)))
        is_test = [(by_id[u].utt.session if sp.strategy == "session" else by_id[u].utt.speaker) in held
                   for u, _ in units]
        if not any(is_test) or all(is_test):
            if sp.strategy == "speaker":
                raise ConfigError(f"split.strategy speaker of dataset {dataset!r}: the speakers left after reading "
                                  "the audio make no train or no test part: add speakers, or change "
                                  "split.test_fraction")
            present = sorted({s.utt.session for s in utts})
            raise ConfigError(f"split.test_sessions {sp.test_sessions} must leave both a test and a "
                              f"train part (sessions present: {', '.join(present)})")
        train = [u for u, t in zip(units, is_test) if not t]
        test = [u for u, t in zip(units, is_test) if t]
    else:
        train, test = _stratified_holdout(units, labels, sp.test_fraction, cfg.seed)
    classes = view.classes if view is not None else PRESETS.get(dataset, tuple(sorted(set(labels))))
    allow_empty = view is not None and view.allow_empty
    check_classes(train, test, by_id, classes, dataset, allow_empty)
    train, validation = validation_part(train, by_id, cfg, dataset)
    check_fold_sizes(train, by_id, cfg, dataset, classes, allow_empty)
    folds = _folds(train, by_id, cfg)
    out: dict[tuple[str, int], tuple[str, int | None]] = {}
    for unit, fold in zip(train, folds):
        out[unit] = ("train", fold)
    for unit in validation:
        out[unit] = ("validation", None)
    for unit in test:
        out[unit] = ("test", None)
    return out


def validation_part(train: list[Unit], by_id: dict[str, ScannedUtterance], cfg: Config,
                    dataset: str = "") -> tuple[list[Unit], list[Unit]]:
    """(train, validation): ``split.validation_fraction`` of the train part held out as the test
    part is (whole speakers for a speaker or session split, else the strategy's units), seeded
    apart from the test draw and stratified by class, so validation scores what test will. A
    class the draw leaves out of validation is said, not refused (its scores are still reported)."""
    fraction = cfg.split.validation_fraction
    if not fraction:
        return train, []
    labels = [by_id[u].utt.label for u, _ in train]
    seed = seeds.derive(cfg.seed, dataset, "validation")
    if cfg.split.strategy in ("speaker", "session"):
        speakers = [by_id[u].utt.speaker for u, _ in train]
        held = set(held_out_groups(labels, speakers, fraction, seed, f"split.validation_fraction{_of(dataset)}"))
        keep = [u for u, sp in zip(train, speakers) if sp not in held]
        validation = [u for u, sp in zip(train, speakers) if sp in held]
    else:
        keep, validation = _stratified_holdout(train, labels, fraction, seed)
    missing = sorted(set(labels) - {by_id[u].utt.label for u, _ in validation})
    if missing:
        print(f"serwild build: note: dataset '{dataset}': the validation part has no sample of "
              f"{', '.join(repr(c) for c in missing)} (its validation recall is not measured)", file=sys.stderr)
    return keep, validation


def _of(dataset: str) -> str:
    return f" of dataset {dataset!r}" if dataset else ""


def held_out_groups(labels: list[str], groups: list[str], fraction: float, seed: int, what: str) -> list[str]:
    """About ``fraction`` of the groups (speakers), label-stratified and seeded: one of
    ``round(1 / fraction)`` StratifiedGroupKFold folds (fewer when there are fewer groups)."""
    from sklearn.model_selection import StratifiedGroupKFold

    names = sorted(set(groups))
    check_two_speakers(len(names), what)
    n = min(speaker_folds(fraction), len(names))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        splitter = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed % 2**32)
        _, held_idx = next(iter(splitter.split(np.zeros(len(labels)), labels, groups)))
    return sorted({groups[i] for i in held_idx})


def check_two_speakers(n: int, what: str) -> None:
    """Holding speakers out of a part needs at least two of them in it (one held, one kept)."""
    if n < 2:
        raise ConfigError(f"{what}: the train part has {n} speaker(s), and holding some out for "
                          "validation needs at least 2: add speakers, or set split.validation_fraction: 0")


def speaker_folds(fraction: float) -> int:
    """The speakers are dealt into this many label-stratified groups, one held out: the held-out
    share is 1/n, the nearest to ``fraction`` (0.2 → 5, 0.25 → 4, 0.3 → 3)."""
    return max(2, round(1 / fraction))


def test_speakers(utts: list[Utterance], fraction: float, seed: int, dataset: str = "") -> list[str]:
    """The speakers a ``split.strategy: speaker`` build holds out for test (:func:`held_out_groups`: a seeded,
    label-stratified group of about ``fraction`` of them). Read from the utterance list alone, so a split that
    cannot be made is refused before any audio is read."""
    speakers = sorted({u.speaker for u in utts})
    n = speaker_folds(fraction)
    where = f" of dataset {dataset!r}" if dataset else ""
    if speakers == ["unknown"]:
        raise ConfigError(f"split.strategy speaker{where}: the corpus names no speakers (an audiofolder without a "
                          "speaker column): add one, or use split.strategy utterance")
    if len(speakers) < n + 1:
        raise ConfigError(f"split.strategy speaker{where}: {len(speakers)} speaker(s), but holding out "
                          f"{fraction:g} of them needs at least {n + 1} (one test group of {n}, and a train "
                          f"part): add speakers, raise split.test_fraction, or use split.strategy utterance")
    return held_out_groups([u.label for u in utts], [u.speaker for u in utts], fraction, seed,
                           f"split.strategy speaker{where}")


def _stratified_holdout(units: list[Unit], labels: list[str], fraction: float, seed: int):
    from sklearn.model_selection import train_test_split  # here: shard workers import this module too

    try:
        train, test = train_test_split(units, test_size=fraction, random_state=seed % 2**32,
                                       stratify=labels)
    except ValueError as e:  # a class too small to stratify: say so loudly, then split at random
        print(f"serwild build: note: the test split cannot be stratified by class ({e}); it is drawn "
              f"at random instead, so class proportions in train and test may differ", file=sys.stderr)
        train, test = train_test_split(units, test_size=fraction, random_state=seed % 2**32)
    return sorted(train), sorted(test)


def check_classes(train: list[Unit], test: list[Unit], by_id: dict[str, ScannedUtterance], classes: tuple[str, ...],
                  dataset: str, allow_empty: bool) -> None:
    """Every class of the view needs a training and a test sample: with none, a model never
    learns it or is never scored on it while its reports still name it. Said before anything
    is rendered, naming the view and the class; a view with ``allow_empty`` gets a warning."""
    for part, units in (("training", train), ("test", test)):
        present = {by_id[u].utt.label for u, _ in units}
        empty = [c for c in classes if c not in present]
        if empty and allow_empty:  # one line per part, however many classes (a view may have hundreds)
            more = f" and {len(empty) - 10} more" if len(empty) > 10 else ""
            shown = ", ".join(f"'{c}'" for c in empty[:10]) + more
            print(f"serwild build: warning: dataset '{dataset}': {len(empty)} class(es) have no {part} sample: "
                  f"{shown} (allowed by allow_empty; the hub card says so)", file=sys.stderr)
            continue
        if empty:
            c = empty[0]
            raise ConfigError(f"dataset '{dataset}': class '{c}' has no {part} sample (of "
                              f"{sum(1 for s in by_id.values() if s.utt.label == c)} utterance(s) in the corpus): "
                              f"add recordings of it, use a view without it, or set views.{dataset}.allow_empty: "
                              "true in a view of your own")


def check_speaker_split(utts: list[Utterance], views: dict[str, View], cfg: Config) -> None:
    """A speaker or session split: refuse, right after the corpus is read, one that cannot be made
    (too few speakers for the test fraction, no speaker column, fewer than two training speakers
    to hold some out for validation), per view."""
    sp = cfg.split
    if sp.strategy not in ("speaker", "session"):
        return
    for name, view in views.items():
        mine = [dataclasses.replace(u, label=view.classes[i])
                for u in utts if (i := view.class_of(u.label)) is not None]
        held = (set(test_speakers(mine, sp.test_fraction, cfg.seed, name)) if sp.strategy == "speaker" else set())
        left = {u.speaker for u in mine if u.speaker not in held and u.session not in sp.test_sessions}
        if sp.validation_fraction:
            check_two_speakers(len(left), f"split.validation_fraction{_of(name)}")


def held_out_speakers(specs: list[ShardSpec]) -> dict[str, dict[str, list[str]]]:
    """Per dataset, the speakers of its test, train and validation parts (a speaker-independent
    split holds none in two): what the manifest, the card and every report name."""
    parts: dict[str, dict[str, set[str]]] = defaultdict(lambda: {"test": set(), "train": set(), "validation": set()})
    for spec in specs:
        for x in spec.samples:
            parts[x.dataset][x.split].add(x.speaker)
    return {d: {f"{part}_speakers": sorted(names) for part, names in p.items() if names or part != "validation"}
            for d, p in parts.items()}


def check_corpus_classes(utts: list[Utterance], views: dict[str, View]) -> None:
    """Refuse, right after the corpus is read (before the audio is scanned), a view with a class
    no utterance has: ``datasets: [ahsn, aesn]`` over a list with no ``exc`` would otherwise
    build a "4-class" aesn with one class empty."""
    for name, view in views.items():
        have = Counter(i for u in utts if (i := view.class_of(u.label)) is not None)
        for i, c in enumerate(view.classes):
            if not have[i] and not view.allow_empty:
                raise ConfigError(f"dataset '{name}': class '{c}' has no utterance in this corpus: add recordings "
                                  f"of it, use a view without it, or set views.{name}.allow_empty: true in a view "
                                  "of your own")


def check_fold_sizes(train: list[Unit], by_id: dict[str, ScannedUtterance], cfg: Config, dataset: str,
                     classes: tuple[str, ...] | None = None, allow_empty: bool = False) -> None:
    """Every class needs at least ``split.folds`` units in the train part: with fewer, some
    validation fold has none of it (and with every class that small, sklearn's splitter
    raises). Said before anything is rendered, naming the smallest class."""
    k = cfg.split.folds
    counts = Counter(by_id[u].utt.label for u, _ in train)
    classes = classes or PRESETS.get(dataset, tuple(sorted(counts)))
    sized = [(c, counts.get(c, 0)) for c in classes if counts.get(c, 0) or not allow_empty]
    if not sized:
        return
    label, n = min(sized, key=lambda cn: cn[1])
    if n < k:
        unit = "blocks" if cfg.split.strategy == "block" else "utterances"
        raise ConfigError(f"split.folds={k} but class '{label}'{f' of dataset {dataset!r}' if dataset else ''} has "
                          f"only {n} unit(s) ({unit}) in the train part: lower split.folds or add recordings of "
                          "that class")


def _folds(train: list[Unit], by_id: dict[str, ScannedUtterance], cfg: Config) -> list[int]:
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    k = cfg.split.folds
    labels = [by_id[u].utt.label for u, _ in train]
    if cfg.split.strategy in ("session", "speaker"):
        # Speaker-independent folds: no speaker in both a fold and the rest of the train part.
        groups = [by_id[u].utt.speaker for u, _ in train]
        if len(set(groups)) < k:
            raise ConfigError(f"split.folds={k} but the train part has only {len(set(groups))} speakers "
                              "(session split keeps speakers out of their own validation fold)")
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=cfg.seed % 2**32)
        splits = splitter.split(np.zeros(len(train)), labels, groups)
    else:
        if len(train) < k:
            raise ConfigError(f"split.folds={k} but the train part has only {len(train)} units")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The least populated class")
            splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=cfg.seed % 2**32)
            splits = list(splitter.split(np.zeros(len(train)), labels))
    fold_of = [0] * len(train)
    for fold, (_, val_idx) in enumerate(splits):
        for i in val_idx:
            fold_of[i] = fold
    return fold_of


# ----------------------------------------------------------------------------- shards


def plan_shards(scanned: list[ScannedUtterance], noises: list[NoiseFile], cfg: Config) -> list[ShardSpec]:
    """Every shard of the build, each with its samples fully decided."""
    snrs: list[float | None] = [None, *cfg.snr_db]
    names = [condition_name(s) for s in snrs]
    if len(set(names)) != len(names):  # e.g. 15 and 15.0000001: both "snr15"
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"snr_db {cfg.snr_db}: two values give the same condition name {dup!r}")
    block_len = int(round(cfg.audio.block_seconds * cfg.audio.sample_rate))
    specs: list[ShardSpec] = []
    for dataset, view in resolve_views(cfg.datasets, cfg.views).items():
        classes = view.classes
        utts = view_utterances(scanned, view)
        if not utts:
            raise ConfigError(f"datasets: '{dataset}' has no usable utterance in this corpus")
        split_of = assign_splits(utts, cfg, dataset, view)
        groups: dict[tuple[str, int | None], list[tuple[ScannedUtterance, int]]] = defaultdict(list)
        for s in utts:
            for b in s.blocks:
                split, fold = split_of.get((s.utt.id, b)) or split_of[(s.utt.id, -1)]
                groups[(split, fold)].append((s, b))
        for (split, fold), blocks in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
            # One permutation per group, shared by all conditions: shard i of every condition
            # holds the same blocks, and each shard mixes classes for streaming training.
            rng = np.random.default_rng(seeds.derive(cfg.seed, dataset, split, fold))
            order = rng.permutation(len(blocks))
            n_shards = -(-len(blocks) // cfg.shard.max_samples)
            for snr in snrs:
                cond = condition_name(snr)
                folder = f"{dataset}/{split}" + (f"/fold{fold}" if fold is not None else "")
                for i, part in enumerate(np.array_split(order, n_shards)):
                    samples = tuple(sorted(
                        (_sample(blocks[j], dataset, classes, cond, snr, split, fold, noises, block_len, cfg)
                         for j in part), key=lambda x: x.key))
                    specs.append(ShardSpec(f"{folder}/{cond}-{i:06d}.tar", dataset, split, fold, cond,
                                           snr, samples))
    check_unique_keys(specs)
    return specs


def view_utterances(scanned: list[ScannedUtterance], view: View) -> list[ScannedUtterance]:
    """The utterances a view uses, each labelled with its class name in the view (a merged
    label, ``exc`` in a view merging it into ``hap``, becomes ``hap``)."""
    out = []
    for s in scanned:
        i = view.class_of(s.utt.label)
        if i is not None:
            out.append(s if s.utt.label == view.classes[i] else
                       dataclasses.replace(s, utt=dataclasses.replace(s.utt, label=view.classes[i])))
    return out


def check_unique_keys(specs: list[ShardSpec]) -> None:
    """A key names one sample of a dataset: two samples under one key would be one sample to
    every reader (and the build would fail its own verify). The corpus readers reject
    repeated and unsafe ids, so this is a last line of defence; it names both inputs."""
    owner: dict[tuple[str, str], SampleSpec] = {}
    for spec in specs:
        for s in spec.samples:
            first = owner.setdefault((s.dataset, s.key), s)
            if first is not s:
                raise UsageError(f"two samples share the key {s.key!r} ({first.path} block {first.block} and "
                                 f"{s.path} block {s.block}): each utterance id must be listed once")


def _sample(item: tuple[ScannedUtterance, int], dataset: str, classes: tuple[str, ...], cond: str,
            snr: float | None, split: str, fold: int | None, noises: list[NoiseFile], block_len: int,
            cfg: Config) -> SampleSpec:
    s, b = item
    u = s.utt
    key = f"{u.id}_b{b:03d}_{cond}"
    noise = offset = None
    if snr is not None:
        rng = np.random.default_rng(seeds.derive(cfg.seed, dataset, key))
        nf = noises[int(rng.integers(len(noises)))]
        # Training (and validation) blocks draw from the first part of each noise file, test
        # blocks from the held-out last part, so test noise is never heard in training.
        lo, hi = (nf.split_at, nf.length - block_len) if split == "test" else (0, nf.split_at - block_len)
        offset = int(rng.integers(lo, hi + 1))
        noise = nf
    return SampleSpec(
        key=key, dataset=dataset, label=u.label, class_index=classes.index(u.label), utterance=u.id,
        speaker=u.speaker, session=u.session, path=u.path, source=u.source, native_sr=s.native_sr,
        block=b, condition=cond, snr_db=snr, noise=noise.name if noise else None,
        noise_path=noise.path if noise else None, noise_offset=offset, split=split, fold=fold, segment=u.segment,
        extra=u.extra)
