"""The run spec: one name per run (fold included), one answer to "what does this run folder
hold?", the build's identity as an allow-list, and the resolved config.yaml as the only thing
the launcher hands its ranks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serwild.config import BUILD_KEYS, Config, build_identity, config_from_resolved, load_config, to_dict
from serwild.errors import UsageError
from serwild.processes import torchrun
from serwild.processes.checkpoint import Checkpoint, save_checkpoint
from serwild.trainer import launch
from serwild.trainer.preflight import RunRef, plan_data, resolve, run_state, spec_yaml


def _cfg(tmp_path: Path, *extra: str) -> Config:
    return load_config(None, [f"train.run_dir={tmp_path / 'runs'}", "train.dataset=ahsn", "train.pretrained=none",
                              *extra])


def test_one_name_per_run(tmp_path: Path) -> None:
    derived = RunRef.of(_cfg(tmp_path, "train.conditions=[clean, snr15]"))
    assert derived.name == "ahsn-clean+snr15" and derived.dir == tmp_path / "runs" / "ahsn-clean+snr15"
    assert RunRef.of(_cfg(tmp_path, "cv.fold=2")).name == "ahsn-clean-fold2"
    named = RunRef.of(_cfg(tmp_path, "train.name=mine", "cv.fold=2"))
    assert named.name == "mine"  # a given name is the folder's name, as given
    assert named.fold_run(3).name == "mine-fold3" and named.cv_dir == tmp_path / "runs" / "mine-cv"
    # resolving writes the name into the config, and resolving again changes nothing
    once = resolve(_cfg(tmp_path, "cv.fold=1"))
    assert once.train.name == "ahsn-clean-fold1" and resolve(once) == once


def test_the_build_identity_is_an_allow_list(tmp_path: Path) -> None:
    base = build_identity(_cfg(tmp_path))
    assert base is not None and set(base) == set(BUILD_KEYS)
    for later_stage in ("train.lr=0.5", "out=elsewhere", "ray.num_cpus=1", "eval.batch_size=3", "smoke=true"):
        assert build_identity(_cfg(tmp_path, later_stage)) == base, later_stage
    for build_key in ("audio.n_fft=256", "snr_db=[10]", "split.folds=3", "seed=4"):
        assert build_identity(_cfg(tmp_path, build_key)) != base, build_key
    # a manifest's config written before a key existed reads back at that key's default
    old = to_dict(_cfg(tmp_path))
    del old["audio"]["n_fft"]
    assert build_identity(old) == base
    # except the validation part: a build made before the key held none (0, not today's 0.1)
    del old["split"]["validation_fraction"]
    assert build_identity(old)["split"]["validation_fraction"] == 0.0 != base["split"]["validation_fraction"]
    assert build_identity(_cfg(tmp_path, "split.validation_fraction=0")) == build_identity(old)
    assert build_identity({"corpus": "not a section"}) is None


def _checkpoint(path: Path, epoch: int, fingerprint: str = "f" * 64) -> None:
    save_checkpoint(path, Checkpoint(model={}, epoch=epoch, config={}, classes=["a", "b"], dataset="ahsn",
                                     manifest_fingerprint=fingerprint, arch="tiny"))


def test_what_a_run_folder_holds(tmp_path: Path) -> None:
    cfg = resolve(_cfg(tmp_path, "train.epochs=2"))
    run = RunRef.of(cfg).dir
    assert run_state(run) == ("empty", "")
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(json.dumps(to_dict(cfg)))  # JSON is YAML
    assert run_state(run) == ("empty", "")  # the spec `serwild train` writes first is not a run yet
    assert run_state(run, cfg) == ("empty", "")
    (run / "metrics.jsonl").write_text("")
    assert run_state(run) == ("started", "metrics.jsonl, config.yaml")  # killed before its first epoch
    _checkpoint(run / "last.pt", 1)
    assert run_state(run)[0] == "partial" and run_state(run, cfg, "f" * 64)[0] == "partial"
    _checkpoint(run / "last.pt", 2)
    assert run_state(run, cfg, "f" * 64)[0] == "partial"  # no best.pt yet
    _checkpoint(run / "best.pt", 2)
    assert run_state(run, cfg, "f" * 64) == ("done", "")
    assert run_state(run, cfg, "0" * 64) == ("other", f"trained on another build (fingerprint {'f' * 12})")
    state, why = run_state(run, resolve(_cfg(tmp_path, "train.epochs=2", "train.lr=0.5")), "f" * 64)
    assert state == "other" and why.startswith("train.lr: ") and why.endswith("→ 0.5")
    # the evaluator's section changes no weights: a run is the same run under other eval settings
    assert run_state(run, resolve(_cfg(tmp_path, "train.epochs=2", "eval.batch_size=3")), "f" * 64)[0] == "done"
    (run / "last.pt").write_bytes(b"cut")
    assert run_state(run, cfg, "f" * 64) == ("other", "last.pt is not readable")


def test_ranks_start_from_the_spec_in_the_run_folder(tmp_path: Path, tiny_build: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`serwild train` writes the resolved config into the run folder and hands the ranks that
    file alone: no overrides, no other config travel to them."""
    seen: list[list[str]] = []
    monkeypatch.setattr(torchrun, "launch", lambda cmd, nproc: seen.append(cmd) or 0)
    cfg = _cfg(tmp_path, f"out={tiny_build}", "train.lr=0.25", "train.conditions=[clean, snr15]")
    assert launch.train(cfg, launch.LaunchOptions(nproc=2)) == 0
    run = RunRef.of(resolve(cfg)).dir
    spec = run / "config.yaml"
    assert seen[0][-3:] == ["serwild.trainer", "--config", str(spec)]
    assert spec.read_text() == spec_yaml(resolve(cfg), plan_data(resolve(cfg)))
    from_file = load_config(spec)
    assert from_file.train.lr == 0.25 and resolve(from_file) == from_file  # what the ranks resolve is the spec
    assert to_dict(config_from_resolved(to_dict(from_file))) == to_dict(from_file)
    with pytest.raises(UsageError, match="--resume: .*last.pt does not exist"):
        launch.train(cfg, launch.LaunchOptions(nproc=2, resume=True))
