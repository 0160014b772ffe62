"""serwild.evaluate: per-condition reports, comparisons, exports and the inference API.

``from serwild.evaluate import Predictor`` is the public inference entry point
(:class:`serwild.evaluate.predict.Predictor`); it is imported on first use, so importing
another module of this package does not load the model code.
"""

from typing import Any

__all__ = ["Predictor", "Prediction"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from serwild.evaluate import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'serwild.evaluate' has no attribute {name!r}")
