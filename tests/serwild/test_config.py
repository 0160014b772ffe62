"""Config loading: YAML → frozen dataclasses → dotted overrides; bad input is one clear line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from serwild.config import ConfigError, config_from_resolved, load_config, to_dict

REPO = Path(__file__).resolve().parents[2]


def test_defaults_overrides_and_types() -> None:
    cfg = load_config(None, ["split.strategy=session", "split.test_sessions=[Ses05]", "snr_db=[5, 7.5]",
                             "ray.num_cpus=3", "train.conditions=clean"])
    assert cfg.split.strategy == "session"
    assert cfg.snr_db == [5.0, 7.5]
    assert cfg.ray.num_cpus == 3
    assert cfg.train.conditions == ["clean"]  # a scalar where a list is expected becomes a list
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]


@pytest.mark.parametrize("override, words", [
    ("split.stratgy=block", ["unknown config key", "split.stratgy"]),
    ("split.strategy=speakers", ["split.strategy", "block | utterance | speaker | session"]),
    ("seed=abc", ["seed", "integer"]),
    ("split.folds=1", ["split.folds", "at least 2"]),
    ("noise.test_fraction=1.5", ["noise.test_fraction"]),
    ("nonsense", ["key=value"]),
])
def test_bad_values_name_the_key(override: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("split: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_load_and_round_trip(name: str) -> None:
    cfg = load_config(REPO / "configs" / name)
    assert config_from_resolved(to_dict(cfg)) == cfg


def test_on_and_off_choices_survive_yaml_booleans() -> None:
    # YAML 1.1 reads a bare `off` as false: a choice named off must still be off, in a file or an override.
    assert load_config(None, ["train.feature_cache=off"]).train.feature_cache == "off"
    assert load_config(None, ["train.feature_cache=on"]).train.feature_cache == "on"
