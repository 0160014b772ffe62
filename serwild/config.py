"""Config: YAML file → frozen dataclasses → ``key=value`` overrides (dotted keys).

One file drives every stage (``serwild build|train|evaluate --config X``); each stage owns
its section's dataclass (``serwild.builder.config`` …) and this module only composes them
and does the generic, strict loading: an unknown key or a value of the wrong type is one
:class:`ConfigError` line naming the dotted key, which the CLI turns into exit status 2.
"""

from __future__ import annotations

import codecs
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from serwild.builder.config import (
    SEED_MAX,
    AudioConfig,
    CorpusConfig,
    NoiseConfig,
    RayConfig,
    ShardConfig,
    SplitConfig,
    check_range,
)
from serwild.data.config import RemoteConfig
from serwild.errors import UsageError
from serwild.evaluate.config import EvalConfig
from serwild.trainer.config import CvConfig, TrainConfig

YAML_BOOL_WORDS = {True: ("on", "yes", "true"), False: ("off", "no", "false")}
MAX_CONFIG_BYTES = 1 << 20  # a config is a few KB; past this it is the wrong file (or /dev/zero)
MAX_DEPTH = 50  # our configs nest 3 deep; YAML's composer recurses once per level
MAX_SNRS = 16  # each SNR is one more full copy of the build
SNR_RANGE = (-50.0, 100.0)  # dB: from noise 300x louder than speech to noise inaudible


class ConfigError(UsageError):
    """A bad config file, key or value; the message is one line naming it."""


@dataclass(frozen=True)
class Config:
    seed: int = 0
    out: str = "shards/demo"
    datasets: list[Literal["ahsn", "aesn"]] = field(default_factory=lambda: ["ahsn", "aesn"])
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

    def __post_init__(self) -> None:
        check_range("seed", self.seed, 0, SEED_MAX)
        if len(self.snr_db) > MAX_SNRS:
            raise ValueError(f"config key 'snr_db' lists {len(self.snr_db)} values, at most {MAX_SNRS} "
                             "(each is a copy of the whole build)")
        for snr in self.snr_db:
            check_range("snr_db", snr, *SNR_RANGE)


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
        p = Path(path)
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
    return from_dict(Config, data)


def read_config_text(p: Path) -> str:
    """A config file's text: UTF-8 (a leading byte-order mark is dropped), at most MAX_CONFIG_BYTES."""
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"cannot read config {p}: {e.strerror or e}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config {p} is larger than {MAX_CONFIG_BYTES >> 20} MiB: not a serwild config")
    skip = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = skip + e.start
        line = raw[:at].count(b"\n") + 1
        raise ConfigError(f"config {p} is not UTF-8 text (byte {at}, line {line}: {raw[at:at + 1]!r}); "
                          "save it as UTF-8") from None


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
    if origin is list:
        if not isinstance(value, list):
            value = [value]  # a scalar where a list is expected: `train.conditions=clean`
        items = [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
        # A repeated SNR, dataset or condition would be built, trained or scored twice. A set, not
        # a list: a list of a few hundred thousand values (1 MiB of YAML) must not take hours here.
        seen: set[Any] = set()
        for v in items:
            if isinstance(v, (str, int, float)) and v in seen:
                raise ConfigError(f"config key {key!r}: {v!r} is listed more than once")
            if isinstance(v, (str, int, float)):
                seen.add(v)
        return items
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r}: expected true or false, got {value!r}")
        return value
    if tp is int:
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


def dump_yaml(cfg: Any, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


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
