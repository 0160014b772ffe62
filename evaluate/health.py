"""Is a model's report worth reading? Flags for a model that has learnt nothing.

A model that predicts one class for (nearly) every block, or one that cannot be told from
guessing, still gets a full table with intervals; these flags say so in one visible line
wherever its numbers are shown (``evaluate``, ``compare``, ``reproduce``, an exported card):

- **one class**: the most predicted class takes at least :data:`ONE_CLASS_SHARE` (95 %) of
  the blocks, over all test conditions together or on any single one;
- **at chance**: the 95 % interval of UA (mean per-class recall) includes chance, 1/K for the
  K classes present in the test set (what any guess that ignores the input scores on
  average), on some test condition.

A model is *degenerate* when it predicts one class overall, or is at chance on every test
condition; at chance on only some conditions (a clean-trained model at 15 dB) is a finding
about those conditions, and the warning names them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ONE_CLASS_SHARE = 0.95


def _label(name: str, cond: Mapping[str, Any]) -> str:
    snr = cond.get("snr_db")
    return name if snr is None else f"{snr:g} dB"


def _order(conditions: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return sorted(conditions, key=lambda c: (conditions[c].get("snr_db") is not None,
                                             conditions[c].get("snr_db") or 0.0, c))


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


def model_flags(result: Mapping[str, Any], unit: str = "block") -> dict[str, Any]:
    """``{"degenerate", "one_class", "at_chance", "messages"}`` for one evaluate report.

    ``one_class``: ``{"class", "share", "where"}`` or None; ``at_chance``: the labels of the
    conditions whose UA interval includes chance; ``messages``: one line per finding (empty
    when there is nothing to say)."""
    conds = result.get("conditions") or {}
    classes = list(result.get("classes") or [])
    order = _order(conds)
    if not order:
        return {"degenerate": False, "one_class": None, "at_chance": [], "messages": []}
    total = sum(np.asarray(conds[c][unit]["confusion"], dtype=np.float64) for c in order)
    one_class = _one_class(prediction_shares(total), classes, "all test conditions")
    if one_class is None:
        for c in order:
            found = _one_class(prediction_shares(conds[c][unit]["confusion"]), classes, _label(c, conds[c]))
            if found is not None:
                one_class = found
                break
    at_chance = []
    for c in order:
        ci = (conds[c][unit].get("ci") or {}).get("ua")
        if ci is not None and float(ci["low"]) <= chance_ua(conds[c][unit]) <= float(ci["high"]):
            at_chance.append(_label(c, conds[c]))
    degenerate = bool((one_class and one_class["where"] == "all test conditions")
                      or (at_chance and len(at_chance) == len(order)))
    return {"degenerate": degenerate, "one_class": one_class, "at_chance": at_chance,
            "messages": _messages(one_class, at_chance, chance_ua(conds[order[0]][unit]), degenerate)}


def _one_class(shares: np.ndarray, classes: Sequence[str], where: str) -> dict[str, Any] | None:
    if not len(shares) or shares.max() < ONE_CLASS_SHARE:
        return None
    i = int(np.argmax(shares))
    return {"class": classes[i] if i < len(classes) else str(i), "share": float(shares[i]), "where": where}


def _messages(one_class: Mapping[str, Any] | None, at_chance: list[str], chance: float,
              degenerate: bool) -> list[str]:
    out = []
    if one_class:
        out.append(f"predicts '{one_class['class']}' for {one_class['share']:.0%} of the blocks "
                   f"({one_class['where']})")
    if at_chance:
        out.append(f"its UA 95 % interval includes chance ({chance:.2f}) at {', '.join(at_chance)}")
    if not out:
        return []
    head = "DEGENERATE MODEL" if degenerate else "WARNING"
    tail = (": its numbers describe a model that has not learnt the task" if degenerate
            else ": on those conditions it cannot be told from guessing")
    return [f"{head}: " + "; ".join(out) + tail]


def flag_lines(name: str, result: Mapping[str, Any], unit: str = "block") -> list[str]:
    """``["⚠ <name>: DEGENERATE MODEL: …"]``: the lines to print and to put in a report."""
    return [f"⚠ {name}: {m}" for m in model_flags(result, unit)["messages"]]
