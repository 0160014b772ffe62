"""``serwild serve``: a small local server around one :class:`~serwild.deploy.Predictor`.

    from serwild.deploy import Predictor
    from serwild.serve import Limits, ServeSettings, create_app
    app = create_app(Predictor("exports/demo-augmented"), ServeSettings(limits=Limits(max_connections=2)))

``create_app`` gives a Starlette (ASGI) app: ``GET /`` the live page (``page.html``, no CDN),
``GET /api/health``, ``POST /api/predict`` (a recording in the body) and the WebSocket
``/api/stream`` (PCM chunks in, one JSON per block out). See docs/serving.md.
"""

from serwild.serve.app import Limits, ServeSettings, create_app

__all__ = ["Limits", "ServeSettings", "create_app"]
