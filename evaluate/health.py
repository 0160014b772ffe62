"""Is a model's report worth reading? Flags for a model that has learnt nothing.

Such a model still gets a full table with intervals; these flags say so in one visible line wherever
its numbers are shown (``evaluate``, ``compare``, ``reproduce``, an exported card). A class never
predicted is flagged on its own: a six-class model that never says three of them can clear UA's
chance by predicting two classes, and the one-class rule misses it. At chance on only some
conditions (a clean-trained model at 15 dB) is a finding about those conditions, not *degenerate*.
The rules and their wording: docs/evaluation.md ("Degenerate models are marked").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from serwild.evaluate.document import Report, condition_label, order_conditions
from serwild.metrics import chance_level

ONE_CLASS_SHARE = 0.95
NEVER_SHARE = 0.01


def prediction_shares(confusion: Sequence[Sequence[int]]) -> np.ndarray:
    """The share of blocks predicted as each class (column sums of ``confusion[true][pred]``)."""
    cm = np.asarray(confusion, dtype=np.float64)
    total = cm.sum()
    return cm.sum(axis=0) / total if total > 0 else np.zeros(cm.shape[1])


def chance_ua(unit: Mapping[str, Any]) -> float:
    """Chance level of UA: 1/K for the K classes with test samples."""
    present = [c for c in (unit.get("per_class") or {}).values() if c.get("support", 0) > 0]
    k = len(present) or len(unit.get("confusion") or []) or 1
    return 1.0 / k


def _includes(unit: Mapping[str, Any], metric: str, chance: float) -> bool:
    ci = (unit.get("ci") or {}).get(metric)
    return ci is not None and float(ci["low"]) <= chance <= float(ci["high"])


def model_flags(result: Report, unit: str = "block") -> dict[str, Any]:
    """``{"degenerate", "one_class", "never_predicted", "at_chance", "still_learning", "messages"}``
    for one evaluate report; ``messages``: one line per finding (empty when there is nothing to say)."""
    conds = result.conditions
    classes = list(result.classes)
    order = order_conditions(conds)
    still = (result.budget or {}).get("still_learning")
    if not order:
        return {"degenerate": False, "one_class": None, "never_predicted": [], "at_chance": [],
                "still_learning": still, "messages": _messages(None, [], [], False, still)}
    total = sum(np.asarray(conds[c][unit]["confusion"], dtype=np.float64) for c in order)
    one_class = _one_class(prediction_shares(total), classes, "all test conditions")
    if one_class is None:
        for c in order:
            found = _one_class(prediction_shares(conds[c][unit]["confusion"]), classes,
                               condition_label(c, conds[c].get("snr_db")))
            if found is not None:
                one_class = found
                break
    shares, support = prediction_shares(total), total.sum(axis=1)
    overall = bool(one_class and one_class["where"] == "all test conditions")  # then it says it all
    never = [] if overall else [classes[i] if i < len(classes) else str(i) for i in range(len(shares))
                                if support[i] > 0 and shares[i] < NEVER_SHARE]
    at_chance = [condition_label(c, conds[c].get("snr_db")) for c in order
                 if _includes(conds[c][unit], "ua", chance_ua(conds[c][unit]))
                 or _includes(conds[c][unit], "weighted_f1", _chance_wf1(conds[c][unit]))]
    degenerate = bool(overall or (at_chance and len(at_chance) == len(order)))
    return {"degenerate": degenerate, "one_class": one_class, "never_predicted": never, "at_chance": at_chance,
            "still_learning": still, "messages": _messages(one_class, never, at_chance, degenerate, still)}


def _chance_wf1(unit: Mapping[str, Any]) -> float:
    supports = np.asarray(unit.get("confusion") or [[0]], dtype=np.float64).sum(axis=1)
    return chance_level("weighted_f1", supports.tolist()) or 0.0


def _one_class(shares: np.ndarray, classes: Sequence[str], where: str) -> dict[str, Any] | None:
    if not len(shares) or shares.max() < ONE_CLASS_SHARE:
        return None
    i = int(np.argmax(shares))
    return {"class": classes[i] if i < len(classes) else str(i), "share": float(shares[i]), "where": where}


def _messages(one_class: Mapping[str, Any] | None, never: list[str], at_chance: list[str],
              degenerate: bool, still_learning: str | None = None) -> list[str]:
    learning = [f"UNDER-TRAINED: {still_learning}"] if still_learning else []
    out = []
    if one_class:
        out.append(f"predicts '{one_class['class']}' for {one_class['share']:.0%} of the blocks "
                   f"({one_class['where']})")
    if never:
        out.append(f"never (under {NEVER_SHARE:.0%} of the blocks) predicts {', '.join(repr(c) for c in never)}")
    if at_chance:
        out.append(f"its UA or weighted-F1 95 % interval includes chance at {', '.join(at_chance)}")
    if not out:
        return learning
    head = "DEGENERATE MODEL" if degenerate else "WARNING"
    tail = (": its numbers describe a model that has not learnt the task" if degenerate
            else ": on those conditions it cannot be told from guessing" if at_chance
            else ": its numbers do not cover those classes")
    return [f"{head}: " + "; ".join(out) + tail, *learning]


def flag_lines(name: str, result: Report, unit: str = "block") -> list[str]:
    """``["⚠ <name>: DEGENERATE MODEL: …"]``: the lines to print and to put in a report."""
    return [f"⚠ {name}: {m}" for m in model_flags(result, unit)["messages"]]
