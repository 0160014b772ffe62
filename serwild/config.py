"""Config: YAML file → frozen dataclasses → ``key=value`` overrides (dotted keys).

One file drives every stage (``serwild build|train|evaluate --config X``); each stage owns
its section's dataclass (``serwild.builder.config`` …) and this module only composes them
and does the generic, strict loading: an unknown key or a value of the wrong type is one
:class:`ConfigError` line naming the dotted key, which the CLI turns into exit status 2.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from serwild.builder.config import (
    AudioConfig,
    CorpusConfig,
    NoiseConfig,
    RayConfig,
    ShardConfig,
    SplitConfig,
)
from serwild.data.config import RemoteConfig
from serwild.errors import UsageError
from serwild.evaluate.config import EvalConfig
from serwild.trainer.config import CvConfig, TrainConfig

YAML_BOOL_WORDS = {True: ("on", "yes", "true"), False: ("off", "no", "false")}


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


# ----------------------------------------------------------------------------- loading


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read ``path`` (or the defaults when None), apply ``key=value`` overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config {p}: {e.strerror or e}") from None
        try:
            loaded = yaml.safe_load(text)
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


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` in a nested dict; the value is parsed as YAML (so ``[15, 20]``)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value (e.g. split.strategy=session)")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r}: bad key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
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
        raise ConfigError(f"config section {prefix.rstrip('.') or '<root>'!r}: {e}") from None
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
        # A repeated SNR, dataset or condition would be built, trained or scored twice.
        seen: list[Any] = []
        for v in items:
            if isinstance(v, (str, int, float)) and v in seen:
                raise ConfigError(f"config key {key!r}: {v!r} is listed more than once")
            seen.append(v)
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


def config_from_resolved(data: dict[str, Any]) -> Config:
    """Rebuild a Config from :func:`to_dict` output (e.g. the copy inside a checkpoint)."""
    return from_dict(Config, data)


def replace(cfg: T, **changes: Any) -> T:
    """``dataclasses.replace`` re-exported: configs are frozen, so copies are how they change."""
    return dataclasses.replace(cfg, **changes)  # type: ignore[type-var]
