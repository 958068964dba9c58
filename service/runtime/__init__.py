"""Running the service: Hypercorn wiring, worker processes, heap tuning.

``server``   one process serving: the drivers' loop, the sources, the app under Hypercorn
``workers``  several processes sharing one listening socket
``heap``     the garbage collector's settings once start-up is done
"""

from service.runtime.server import ServeError, find_exception, seed_sources, serve
from service.runtime.workers import serve_workers

__all__ = ["ServeError", "find_exception", "seed_sources", "serve", "serve_workers"]
