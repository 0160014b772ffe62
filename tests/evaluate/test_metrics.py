"""The metrics engine (serwild.metrics) against scikit-learn, the oracle: random confusion matrices
and predictions, classes missing from the truth, the predictions or both; the one table of
names; utterance pooling; and no scikit-learn on the library's import path."""

from __future__ import annotations

import subprocess
import sys
import typing
import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
)

from serwild.evaluate.report import metric as value_at
from serwild.metrics import (
    METRICS,
    RENAMED,
    VALIDATION,
    classification_metrics,
    condition_metrics,
    confusion,
    renamed,
    unit_metrics,
    utterance_logits,
    validation_scores,
)
from serwild.trainer.config import TrainConfig

CLASSES = ["ang", "hap", "sad", "neu"]


def sklearn_metrics(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> dict[str, float]:
    """Every METRICS entry as scikit-learn computes it (labels fixed to all k classes)."""
    kw = {"labels": list(range(k)), "zero_division": 0}
    with warnings.catch_warnings():
        # balanced accuracy warns when a predicted class has no true samples: a case we test
        warnings.simplefilter("ignore", UserWarning)
        ua = balanced_accuracy_score(y_true, y_pred)
    return {
        "wa": accuracy_score(y_true, y_pred), "ua": ua,
        "macro_recall": recall_score(y_true, y_pred, average="macro", **kw),
        "macro_precision": precision_score(y_true, y_pred, average="macro", **kw),
        "macro_f1": f1_score(y_true, y_pred, average="macro", **kw),
        "weighted_precision": precision_score(y_true, y_pred, average="weighted", **kw),
        "weighted_recall": recall_score(y_true, y_pred, average="weighted", **kw),
        "weighted_f1": f1_score(y_true, y_pred, average="weighted", **kw),
    }


def random_predictions(trial: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Skewed label draws (Dirichlet 0.5), so classes go missing from y_true, y_pred or both."""
    rng = np.random.default_rng(trial)
    k = int(rng.integers(2, 11))
    n = int(rng.integers(1, 80))
    y_true = rng.choice(k, size=n, p=rng.dirichlet(np.full(k, 0.5)))
    y_pred = np.where(rng.random(n) < 0.5, y_true, rng.choice(k, size=n, p=rng.dirichlet(np.full(k, 0.5))))
    return y_true, y_pred, k


# ----------------------------------------------------------------------------- the oracle


@pytest.mark.parametrize("trial", range(40))
def test_every_metric_equals_sklearn(trial: int) -> None:
    y_true, y_pred, k = random_predictions(trial)
    cm = confusion(y_true, y_pred, k)
    assert np.array_equal(cm, confusion_matrix(y_true, y_pred, labels=list(range(k))))
    expected = sklearn_metrics(y_true, y_pred, k)
    for name, m in METRICS.items():
        # Same formulas in the same order: equal to the last bit for K < 8; from 8 classes on,
        # numpy sums UA's recalls pairwise over all K where scikit-learn sums the present ones.
        assert float(m.fn(cm)) == pytest.approx(expected[name], rel=1e-15, abs=1e-15), (name, k)


@pytest.mark.parametrize("trial", range(20))
def test_report_entry_equals_sklearn_per_class_and_averaged(trial: int) -> None:
    y_true, y_pred, k = random_predictions(100 + trial)
    classes = [f"c{i}" for i in range(k)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a class never predicted must not warn (zero_division=0)
        m = classification_metrics(y_true, y_pred, classes)
    labels = list(range(k))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    for i, c in enumerate(classes):
        assert m["per_class"][c] == {"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]}
    for avg in ("weighted", "macro"):
        ap, ar, af, _ = precision_recall_fscore_support(y_true, y_pred, average=avg, labels=labels, zero_division=0)
        assert m[avg] == pytest.approx({"precision": ap, "recall": ar, "f1": af}, rel=1e-15)
    assert m["n"] == len(y_true) and m["labels"] == classes
    assert m["wa"] == accuracy_score(y_true, y_pred)
    # every table entry sits at its path in the report entry, with the value the engine gives
    for metric in METRICS.values():
        assert value_at(m, metric.path) == float(metric.fn(np.asarray(m["confusion"]))), metric.name


def test_vectorised_over_a_stack_of_confusion_matrices() -> None:
    # the bootstrap scores a thousand matrices in one call: each must equal its own score
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 5, size=(3, 2, 4, 4))
    stack[0, 0, 2] = 0  # class 2 absent from the truth
    stack[1, 1, :, 3] = 0  # class 3 never predicted
    stack[2, 0] = 0  # no samples at all: every metric 0, not NaN
    for name, m in METRICS.items():
        out = m.fn(stack)
        assert out.shape == (3, 2), name
        for i, j in np.ndindex(3, 2):
            assert out[i, j] == float(m.fn(stack[i, j])), name
        assert out[2, 0] == 0.0


def test_a_tiny_example_by_hand() -> None:
    # 4 angry blocks (3 right), 2 sad blocks (both right); hap and neu neither true nor predicted
    m = classification_metrics([0, 0, 0, 0, 2, 2], [0, 0, 0, 2, 2, 2], CLASSES)
    assert m["n"] == 6 and m["wa"] == 5 / 6
    assert m["ua"] == (3 / 4 + 2 / 2) / 2  # over the 2 classes present
    assert m["macro"]["recall"] == (3 / 4 + 1) / 4  # over all 4
    assert m["per_class"]["ang"] == pytest.approx({"precision": 1.0, "recall": 0.75, "f1": 6 / 7, "support": 4})
    assert m["per_class"]["hap"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["confusion"][0] == [3, 0, 1, 0] and m["confusion"][2] == [0, 0, 2, 0]
    assert m["weighted"]["recall"] == pytest.approx(m["wa"])  # weighted recall is accuracy


def test_validation_scores_from_summed_counts() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 4, 200))
    p[p == 2] = 1  # a class never predicted: zero precision, not NaN
    s = validation_scores(confusion(y, p, 4), CLASSES)
    assert set(s) == {"n", *VALIDATION, "recall", "confusion"} and s["n"] == 200
    expected = sklearn_metrics(y, p, 4)
    assert {k: s[k] for k in VALIDATION} == pytest.approx({k: expected[k] for k in VALIDATION}, rel=1e-15)
    assert s["recall"] == pytest.approx(dict(zip(CLASSES, recall_score(y, p, average=None))))
    with pytest.raises(ValueError, match="no validation samples"):
        validation_scores(np.zeros((4, 4), np.int64), CLASSES)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="no samples"):
        classification_metrics([], [], CLASSES)
    with pytest.raises(ValueError, match=r"\[4\] are outside 0\.\.3"):
        classification_metrics([0, 4], [0, 1], CLASSES)
    with pytest.raises(ValueError, match="outside"):
        confusion([0, -1], [0, 1], 4)
    with pytest.raises(ValueError, match="shapes"):
        classification_metrics([0, 1], [0], CLASSES)
    with pytest.raises(ValueError, match="no samples"):
        unit_metrics(np.zeros((4, 4)), CLASSES)


# ----------------------------------------------------------------------------- one table of names


def test_one_table_of_names() -> None:
    m = unit_metrics(confusion([0, 1, 2, 3, 0], [0, 1, 2, 0, 0], 4), CLASSES)
    for name, metric in METRICS.items():
        assert metric.name == name and metric.title and metric.column
        value_at(m, metric.path)  # every path exists in a report's unit entry
    assert set(VALIDATION) <= set(METRICS)
    choices = set(typing.get_args(typing.get_type_hints(TrainConfig)["best_metric"]))
    assert choices - set(RENAMED) <= set(VALIDATION)  # best.pt is chosen by a validation score
    assert renamed({"accuracy": 0.5, "ua": 0.4}) == {"wa": 0.5, "ua": 0.4}  # an old metrics.jsonl line


def test_old_best_metric_spelling_still_loads_as_wa() -> None:
    # configs (and every checkpoint's copy of its config) of earlier versions say "accuracy"
    assert TrainConfig(best_metric="accuracy").best_metric == "wa"
    assert TrainConfig(best_metric="wa").best_metric == "wa"


def test_no_rank_imports_sklearn() -> None:
    """What a training or evaluation rank imports, and the CLI, stay clear of scikit-learn
    (about 3.5 s per process on the project's machine)."""
    code = ("import sys, serwild.trainer.train, serwild.trainer.__main__, serwild.evaluate.evaluate, "
            "serwild.evaluate.compare, serwild.cli; print(sorted(m for m in sys.modules if m.startswith('sklearn')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- per utterance


def test_utterance_pooling_means_block_logits() -> None:
    # u1: blocks vote hap, hap, ang but the ang block is confident → the mean picks ang.
    logits = np.array([[0.0, 1.0, 0, 0], [0.0, 1.0, 0, 0], [5.0, 0.0, 0, 0],  # u1 (true ang)
                       [0.0, 0.0, 2.0, 0]])  # u0 (true sad)
    labels = np.array([0, 0, 0, 2])
    utts = ["u1", "u1", "u1", "u0"]
    u_logits, u_labels, ids = utterance_logits(logits, labels, utts)
    assert ids == ["u0", "u1"]  # sorted: independent of read order
    assert u_labels.tolist() == [2, 0]
    assert np.allclose(u_logits[1], logits[:3].mean(axis=0))
    m = condition_metrics(logits, labels, utts, CLASSES)
    assert m["block"]["n"] == 4 and m["utterance"]["n"] == 2
    assert m["block"]["wa"] == pytest.approx(2 / 4)
    assert m["utterance"]["wa"] == 1.0
    # the result does not depend on the order of the blocks
    perm = [3, 1, 0, 2]
    m2 = condition_metrics(logits[perm], labels[perm], [utts[i] for i in perm], CLASSES)
    assert m2 == m


def test_utterance_with_mixed_labels_is_an_error() -> None:
    with pytest.raises(ValueError, match="u1"):
        utterance_logits(np.zeros((2, 4)), np.array([0, 1]), ["u1", "u1"])
