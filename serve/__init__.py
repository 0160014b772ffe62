"""``serwild serve``: a small local server around one :class:`~serwild.deploy.Predictor`.

    app = create_app(Predictor("exports/demo-augmented"), ServeSettings(limits=Limits(max_connections=2)))

gives a Starlette (ASGI) app: the live page, ``/api/health``, ``POST /api/predict`` and the WebSocket
``/api/stream``. Endpoints, security and limits: docs/serving.md.
"""

from serwild.serve.app import Limits, ServeSettings, create_app

__all__ = ["Limits", "ServeSettings", "create_app"]
