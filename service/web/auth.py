"""The bearer token that data endpoints and metrics need, when one is configured."""

from __future__ import annotations

import hmac

from quart import request

from service.web.problems import Reply, unauthorized


def needs_token(path: str) -> bool:
    """Data and metrics need the token; probes, the API description and docs do not.

    /livez and /readyz must answer the orchestrator's probes, which carry no
    token; /readyz reveals only source names and reachability.
    """
    return path == "/collect-data" or path.startswith("/collect-data/") or path == "/metrics"


def token_matches(authorization: str, expected: bytes) -> bool:
    """Whether an Authorization header carries exactly the token, compared in constant time."""
    scheme, _, offered = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(offered.encode(), expected)


class BearerAuth:
    """A before-request check: the whole token, or 401 (no token configured: no check)."""

    def __init__(self, token: str | None) -> None:
        self._expected = token.encode() if token else None

    async def check(self) -> Reply | None:
        """None lets the request through; a reply answers it instead."""
        if self._expected is None or not needs_token(request.path):
            return None
        if token_matches(request.headers.get("Authorization", ""), self._expected):
            return None
        return unauthorized()
