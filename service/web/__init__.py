"""HTTP layer: wiring (app.py), routes, middleware, formats, OpenAPI and metrics.

docs/architecture.md lists the modules, one line each.
"""

from service.web.app import create_app

__all__ = ["create_app"]
