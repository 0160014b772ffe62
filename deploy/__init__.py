"""serwild.deploy: models out — the inference API, real-time streaming, exports and model cards.

``from serwild.deploy import Predictor`` is the public inference entry point
(:class:`serwild.deploy.predict.Predictor`); it is imported on first use, so importing
another module of this package does not load the model code.
"""

from typing import Any

__all__ = ["Predictor", "Prediction"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from serwild.deploy import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'serwild.deploy' has no attribute {name!r}")
