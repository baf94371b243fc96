"""Who may see a dashboard: holders of a token derived from the cluster's secret.

The token is HMAC-SHA256(secret, b"dashboard"): anyone who may use the cluster can compute
it, but it cannot be turned back into the secret, which lets one run code on the cluster.
So a dashboard link can be handed to a browser without handing over the cluster. No tornado
here: the launcher and the Jupyter server extension import this module cheaply.
"""

from __future__ import annotations

import hashlib
import hmac

TOKEN_CONTEXT = b"dashboard"
SESSION_KEY_CONTEXT = b"dashboard-bokeh-sessions"
COOKIE_PREFIX = "rayjupyter-dashboard-"


def dashboard_token(secret: str) -> str:
    """The dashboard token of the cluster with this secret (64 hex characters)."""
    return hmac.new(secret.encode(), TOKEN_CONTEXT, hashlib.sha256).hexdigest()


def session_signing_key(secret: str) -> bytes:
    """The key that signs bokeh's session tokens, so a page's websocket proves its page."""
    return hmac.new(secret.encode(), SESSION_KEY_CONTEXT, hashlib.sha256).hexdigest().encode()


def cookie_name(token: str) -> str:
    """One cookie name per cluster: cookies ignore ports, so two dashboards on one host
    must not overwrite each other's cookie."""
    return COOKIE_PREFIX + hashlib.sha256(token.encode()).hexdigest()[:12]


def token_matches(candidate: str | None, token: str) -> bool:
    """Compare in constant time (bytes: a non-ASCII candidate must not raise)."""
    if not candidate:
        return False
    return hmac.compare_digest(candidate.encode(errors="replace"), token.encode())
