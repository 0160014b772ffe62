"""Config: YAML file → frozen dataclasses → ``key=value`` overrides (dotted keys).

One file drives every stage (``serwild build|train|evaluate --config X``); each stage owns
its section's dataclass (``serwild.builder.config`` …) and this module only composes them
and does the generic, strict loading: an unknown key or a value of the wrong type is one
:class:`ConfigError` line naming the dotted key, which the CLI turns into exit status 2.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from serwild.builder.config import (
    PRESETS,
    SEED_MAX,
    VIEW_NAME,
    AudioConfig,
    CardConfig,
    CorpusConfig,
    NoiseConfig,
    ShardConfig,
    SplitConfig,
    ViewConfig,
    check_range,
    resolve_views,
)
from serwild.data.config import RemoteConfig
from serwild.errors import UsageError
from serwild.evaluate.config import EvalConfig
from serwild.processes.config import RayConfig
from serwild.text import decode_utf8
from serwild.trainer.config import CvConfig, TrainConfig

YAML_BOOL_WORDS = {True: ("on", "yes", "true"), False: ("off", "no", "false")}
MAX_CONFIG_BYTES = 1 << 20  # a config is a few KB; past this it is the wrong file (or /dev/zero)
MAX_DEPTH = 50  # our configs nest 3 deep; YAML's composer recurses once per level
MAX_SNRS = 16  # each SNR is one more full copy of the build
SNR_RANGE = (-50.0, 100.0)  # dB: from noise 300x louder than speech to noise inaudible


# The top-level keys that make a build's bytes: an allow-list, so a key added later (a stage's
# setting, where the build lives, how Ray runs it) is not part of a build's identity until it is
# named here. A build compares these with the config of the build already in its folder, and a
# run's config.yaml takes them from its build (see build_identity).
BUILD_KEYS = ("seed", "datasets", "views", "snr_db", "corpus", "noise", "split", "audio", "shard")


class ConfigError(UsageError):
    """A bad config file, key or value; the message is one line naming it."""


@dataclass(frozen=True)
class Config:
    seed: int = 0
    out: str = "shards/demo"
    # The label sets to build, each a folder and a hub config: the built-in ahsn/aesn or a name under views.
    datasets: list[str] = field(default_factory=lambda: ["ahsn", "aesn"])
    views: dict[str, ViewConfig] = field(default_factory=dict)
    snr_db: list[float] = field(default_factory=lambda: [15.0, 20.0, 40.0])
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cv: CvConfig = field(default_factory=CvConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    remote: RemoteConfig = field(default_factory=RemoteConfig)  # network reads of a build given as a URL
    card: CardConfig = field(default_factory=CardConfig)  # what the dataset and model cards say of the corpus
    # A smoke-sized config (a tiny corpus, an epoch or two): its reports say the numbers show the
    # pipeline runs, not what the method does.
    smoke: bool = False

    def __post_init__(self) -> None:
        check_range("seed", self.seed, 0, SEED_MAX)
        if len(self.snr_db) > MAX_SNRS:
            raise ValueError(f"config key 'snr_db' lists {len(self.snr_db)} values, at most {MAX_SNRS} "
                             "(each is a copy of the whole build)")
        for snr in self.snr_db:
            check_range("snr_db", snr, *SNR_RANGE)
        if not self.datasets:
            raise ValueError("config key 'datasets' must name at least one view (e.g. [ahsn])")
        for name in self.views:
            if not VIEW_NAME.fullmatch(name):
                raise ValueError(f"config key 'views.{name[:80]}': a view name is 1..64 letters, digits, '_' or '-' "
                                 "(it names a folder and a hub config)")
            if name in PRESETS:
                raise ValueError(f"config key 'views.{name}': {name} is a built-in view; give yours another name")
        resolve_views(self.datasets, self.views)  # every listed view exists and is well formed


# ----------------------------------------------------------------------------- loading


class _Refused(yaml.YAMLError):
    """What :class:`StrictLoader` will not load: why, and on which line (None: not known)."""

    def __init__(self, why: str, line: int | None = None) -> None:
        super().__init__(why)
        self.why, self.line = why, line


class StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load``, stricter: a key given twice in one mapping is refused (YAML says keys
    are unique; PyYAML keeps the last silently), nesting is bounded (the composer recurses once
    per level, so 5000 levels are a RecursionError), and an integer past Python's 4300-digit
    limit is refused with its line instead of a ValueError from ``int()``."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} deep", self.peek_event().start_mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # unhashable keys are refused by PyYAML itself; a merge (<<) may override
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in first:
                raise _Refused(f"the key {repr(key)[:80]} is given twice (first on line {first[key]})", line)
            first[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # past sys.get_int_max_str_digits()
            raise _Refused(f"the number is too long ({len(node.value)} characters)",
                           node.start_mark.line + 1) from None


StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_yaml_int)
# YAML 1.2 (and every other YAML reader) reads 1e9 and 1e-4 as numbers; PyYAML's 1.1 rules need a dot
# (1.0e9) and would hand "1e9" on as text, a config error for a number the user wrote plainly.
StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                   re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                                   list("-+0123456789"))


def parse_yaml(text: str) -> Any:
    """YAML text → data with :class:`StrictLoader`; raises yaml.YAMLError (``_Refused`` included)."""
    loader = StrictLoader(text)
    try:
        return loader.get_single_data()
    except RecursionError:  # a last resort: MAX_DEPTH is far below the recursion limit
        raise _Refused(f"nested more than {MAX_DEPTH} deep") from None
    finally:
        loader.dispose()


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read ``path`` (or the defaults when None), apply ``key=value`` overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        p = resolve_config_path(path)
        text = read_config_text(p)
        try:
            loaded = parse_yaml(text)
        except _Refused as e:
            raise ConfigError(f"config {p}{'' if e.line is None else f' line {e.line}'}: {e.why}") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"config {p}{where} is not valid YAML") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config {p} must be a mapping of keys, not {type(loaded).__name__}")
        data = loaded
    for item in overrides:
        apply_override(data, item)
    _default_train_dataset(data)
    return from_dict(Config, data)


def _default_train_dataset(data: dict[str, Any]) -> None:
    """``train.dataset`` left unset with ``datasets`` not building its default (ahsn): the first
    dataset built, so a config that defines one view of its own trains on it without saying so twice."""
    datasets, train = data.get("datasets"), data.get("train")
    if isinstance(datasets, str):
        datasets = [datasets]
    if not isinstance(datasets, list) or not datasets or not isinstance(datasets[0], str):
        return
    if train is None:
        train = data["train"] = {}
    if isinstance(train, dict) and "dataset" not in train and TrainConfig.dataset not in datasets:
        train["dataset"] = datasets[0]


def read_config_text(p: Path) -> str:
    """A config file's text: UTF-8 (a leading byte-order mark is dropped), at most MAX_CONFIG_BYTES."""
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"cannot read config {p}: {e.strerror or e}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config {p} is larger than {MAX_CONFIG_BYTES >> 20} MiB: not a serwild config")
    return decode_utf8(raw, f"config {p}", ConfigError)


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` in a nested dict; the value is parsed as YAML (so ``[15, 20]``)."""
    if "=" not in item:
        raise ConfigError(f"override {item[:100]!r} must look like key=value (e.g. split.strategy=session)")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {item[:100]!r}: bad key {key[:100]!r}")
    try:
        value = parse_yaml(raw) if raw.strip() else None
    except _Refused as e:
        raise ConfigError(f"override {key[:100]}=…: {e.why}") from None
    except yaml.YAMLError:
        value = raw
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item[:100]!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


T = typing.TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, strictly: unknown keys and bad types raise."""
    if not isinstance(data, dict):
        raise ConfigError(f"config key {prefix.rstrip('.') or '<root>'!r} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for key in data:
        if key not in names:
            where = f"{prefix}{key}"
            raise ConfigError(f"unknown config key {where!r} (known here: {', '.join(names)})")
    kwargs = {k: _coerce(hints[k], v, f"{prefix}{k}") for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        text = str(e)  # a check that names its key says enough; others get their section
        raise ConfigError(text if text.startswith("config key ") else
                          f"config section {prefix.rstrip('.') or '<root>'!r}: {text}") from None
    return obj


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, key + ".")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"config key {key!r}: bad value {value!r}")
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads a bare on/off/yes/no as a boolean
            value = next((w for w in YAML_BOOL_WORDS[value] if w in args), value)
        if value not in args:
            choices = " | ".join(str(a) for a in args)
            raise ConfigError(f"config key {key!r}: expected one of {choices}, got {value!r}")
        return value
    if origin is dict:
        return _coerce_mapping(args[1], value, key)
    if origin is list:
        return _coerce_list(args[0], value, key)
    return _coerce_scalar(tp, value, key)


def _coerce_mapping(tp: Any, value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}"[:300])
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or isinstance(k, bool):
            raise ConfigError(f"config key {key!r}: keys are names, got {k!r}")
        out[k] = _coerce(tp, v, f"{key}.{k}")
    return out


def _coerce_list(tp: Any, value: Any, key: str) -> list[Any]:
    if not isinstance(value, list):
        value = [value]  # a scalar where a list is expected: `train.conditions=clean`
    items = [_coerce(tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    # A repeated SNR, dataset or condition would be built, trained or scored twice. A set, not
    # a list: a list of a few hundred thousand values (1 MiB of YAML) must not take hours here.
    seen: set[Any] = set()
    for v in items:
        if isinstance(v, (str, int, float)) and v in seen:
            raise ConfigError(f"config key {key!r}: {v!r} is listed more than once")
        if isinstance(v, (str, int, float)):
            seen.add(v)
    return items


def _coerce_scalar(tp: Any, value: Any, key: str) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
            return int(value)  # 1e6 samples: a whole number written as a float
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r}: expected a number, got {value!r}")
        if not math.isfinite(value):  # YAML's .nan/.inf: no setting of ours means anything there
            raise ConfigError(f"config key {key!r}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"config key {key!r}: expected a string, got {value!r}")
        return str(value)
    if tp is Any:
        return value
    raise ConfigError(f"config key {key!r}: unsupported type {tp}")  # a bug in a dataclass


def to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain data (for YAML, manifests and checkpoints)."""
    return dataclasses.asdict(cfg)


def build_identity(data: Config | Mapping[str, Any]) -> dict[str, Any] | None:
    """The part of a config that makes a build's bytes (:data:`BUILD_KEYS`), as plain data read
    back through the schema, so a key added since (at its default) is no difference; None for data
    that is not a config (a damaged manifest's)."""
    if not isinstance(data, Config):
        data = dict(data)
        split = data.get("split")
        if isinstance(split, Mapping) and "validation_fraction" not in split:
            # written before the key existed, when no build held a validation part: 0, not today's default
            data["split"] = {**split, "validation_fraction": 0.0}
    try:
        cfg = data if isinstance(data, Config) else config_from_resolved(data)
    except (UsageError, TypeError, ValueError):
        return None
    plain = json.loads(json.dumps(to_dict(cfg)))
    out = {k: plain[k] for k in BUILD_KEYS}
    out["split"] = cfg.split.identity()
    return out


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 3) -> str:
    """``key: old → new`` for the first ``limit`` dotted keys where two configs (as plain data) differ."""
    a, b = _flat(dict(old)), _flat(dict(new))
    diff = [f"{k.rstrip('.')}: {a.get(k, '-')} → {b.get(k, '-')}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]
    return "; ".join(diff[:limit]) + (" …" if len(diff) > limit else "")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    return {k: v for key, sub in d.items() for k, v in _flat(sub, f"{prefix}{key}.").items()} if d else {prefix: d}


def config_from_resolved(data: dict[str, Any], source: str | None = None) -> Config:
    """Rebuild a Config from :func:`to_dict` output (e.g. the copy inside a checkpoint), with every
    check a config file gets: a checkpoint's config can ask for as much work as a file's.
    ``source`` (e.g. "checkpoint runs/x/best.pt") starts the error's line when given."""
    try:
        return from_dict(Config, data)
    except ConfigError as e:
        if source is None:
            raise
        raise ConfigError(f"{source}: {e}") from None


def replace(cfg: T, **changes: Any) -> T:
    """``dataclasses.replace`` re-exported: configs are frozen, so copies are how they change."""
    return dataclasses.replace(cfg, **changes)  # type: ignore[type-var]


# ----------------------------------------------------------------------------- installed configs

CONFIG_PACKAGE = "serwild.configs"  # the configs/ folder, installed with the package


def installed_configs() -> dict[str, Path]:
    """Name (file stem) → path of each config installed with the package."""
    from importlib import resources

    try:
        root = resources.files(CONFIG_PACKAGE)
    except ModuleNotFoundError:
        return {}
    return {Path(str(p)).stem: Path(str(p)) for p in sorted(root.iterdir(), key=lambda x: x.name)
            if p.name.endswith(".yaml")}


def resolve_config_path(name: str | Path) -> Path:
    """``--config``'s file: the path itself when it exists; else, for ``NAME``, ``NAME.yaml`` or
    ``configs/NAME.yaml`` (the docs' spelling, run from anywhere), the installed copy. A
    ConfigError listing the installed configs when neither exists."""
    p = Path(name)
    if p.exists() or p.is_absolute() or str(p.parent) not in (".", "configs"):
        return p
    stem = p.name[:-5] if p.name.endswith(".yaml") else p.name
    found = installed_configs()
    if stem in found and (p.suffix in ("", ".yaml")):
        return found[stem]
    raise ConfigError(f"cannot read config {p}: no such file here, nor an installed config of that name "
                      f"(installed: {', '.join(found) or 'none'}; use --config NAME or a path)")
