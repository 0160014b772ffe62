"""Metrics: scikit-learn's numbers, the field's names, and utterance pooling."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    recall_score,
)

from serwild.metrics import classification_metrics, condition_metrics, utterance_logits

CLASSES = ["ang", "hap", "sad", "neu"]


def test_tiny_example_by_hand() -> None:
    # 4 angry blocks (3 right), 2 sad blocks (both right), nothing else.
    y_true = [0, 0, 0, 0, 2, 2]
    y_pred = [0, 0, 0, 2, 2, 2]
    m = classification_metrics(y_true, y_pred, CLASSES)
    assert m["n"] == 6
    assert m["wa"] == pytest.approx(5 / 6)  # 5 of 6 right
    assert m["ua"] == pytest.approx((3 / 4 + 2 / 2) / 2)  # mean recall over the 2 classes present
    assert m["per_class"]["ang"] == pytest.approx({"precision": 1.0, "recall": 0.75, "f1": 6 / 7, "support": 4})
    assert m["per_class"]["sad"]["precision"] == pytest.approx(2 / 3)
    # classes with neither samples nor predictions: zeros, and still listed
    assert m["per_class"]["hap"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["confusion"][0] == [3, 0, 1, 0] and m["confusion"][2] == [0, 0, 2, 0]
    assert m["labels"] == CLASSES
    # weighted recall is accuracy
    assert m["weighted"]["recall"] == pytest.approx(m["wa"])


def test_equal_to_scikit_learn_on_a_hand_made_set() -> None:
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 4, size=97)
    y_pred = np.where(rng.random(97) < 0.6, y_true, rng.integers(0, 4, size=97))
    y_pred[y_pred == 1] = 3  # a class the model never predicts: precision 0 by convention
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # our call must not warn about the never-predicted class
        m = classification_metrics(y_true, y_pred, CLASSES)
    labels = [0, 1, 2, 3]
    assert m["wa"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["ua"] == pytest.approx(recall_score(y_true, y_pred, average="macro", labels=labels))
    assert m["ua"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    for avg in ("weighted", "macro"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average=avg, labels=labels, zero_division=0)
        assert m[avg] == pytest.approx({"precision": p, "recall": r, "f1": f})
    assert m["weighted"]["f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted", zero_division=0))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    for i, c in enumerate(CLASSES):
        assert m["per_class"][c] == pytest.approx({"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]})
    assert m["per_class"]["hap"]["precision"] == 0.0
    assert np.array_equal(m["confusion"], confusion_matrix(y_true, y_pred, labels=labels))
    assert sum(map(sum, m["confusion"])) == m["n"] == 97


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="no samples"):
        classification_metrics([], [], CLASSES)
    with pytest.raises(ValueError, match="outside"):
        classification_metrics([0, 4], [0, 1], CLASSES)
    with pytest.raises(ValueError, match="shapes"):
        classification_metrics([0, 1], [0], CLASSES)


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
