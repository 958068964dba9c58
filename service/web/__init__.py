"""HTTP layer: the Quart-Trio app (app.py), its wire formats (formats.py), metrics."""

from service.web.app import create_app

__all__ = ["create_app"]
