"""The token check in front of every route of the dashboard's tornado application.

Every handler class (bokeh's pages, websockets and static files, and our API) is replaced
by a subclass whose ``prepare`` runs first and answers 403 with a one-line JSON error
unless the request carries the dashboard token: ``?token=``, ``Authorization: token ...``,
or the cookie that a valid ``?token=`` visit sets. A websocket may instead present the
bokeh session token of a page this server rendered (signed with a key derived from the
cluster secret), so the page's own websocket works where cookies do not travel (a
cross-site iframe, a proxy that drops them). ``prepare`` runs before tornado's websocket
handshake, so a refused websocket is refused with a plain 403, not opened and closed.
"""

from __future__ import annotations

import calendar
import datetime as dt
import json
from typing import Any

from tornado.routing import Rule
from tornado.web import Application, Finish, RequestHandler
from tornado.websocket import WebSocketHandler

from rayjupyter.dashboard.auth import cookie_name, token_matches

FORBIDDEN = (
    "a valid dashboard token is required: open the dashboard URL with its ?token=..., or "
    "send the header 'Authorization: token <token>' (rayjupyter.dashboard.auth.dashboard_token)"
)


class GateConfig:
    """What the gate checks against; one per dashboard process."""

    def __init__(self, token: str, cookie_path: str, session_key: bytes | None) -> None:
        self.token = token
        self.cookie = cookie_name(token)
        self.cookie_path = cookie_path
        self.session_key = session_key


class TokenGate:
    """Mixed in ahead of a handler class: the token check runs before anything else."""

    gate: GateConfig

    def prepare(self) -> Any:
        handler: Any = self
        config = self.gate
        query_token = handler.get_query_argument("token", None)
        if token_matches(query_token, config.token):
            handler.set_cookie(
                config.cookie,
                config.token,
                path=config.cookie_path,
                httponly=True,
                samesite="Lax",  # never sent by another site's scripts or websockets
            )
            # bokeh copies request arguments into the session token it embeds in the page
            handler.request.arguments.pop("token", None)
            handler.request.query_arguments.pop("token", None)
        elif not self._authorized(handler, config):
            handler.set_status(403)
            handler.set_header("Content-Type", "application/json")
            handler.set_header("Cache-Control", "no-store")
            raise Finish(json.dumps({"error": FORBIDDEN}) + "\n")
        return super().prepare()  # type: ignore[misc]

    @staticmethod
    def _authorized(handler: Any, config: GateConfig) -> bool:
        header = handler.request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() in ("token", "bearer") and token_matches(value.strip(), config.token):
            return True
        if token_matches(handler.get_cookie(config.cookie), config.token):
            return True
        return isinstance(handler, WebSocketHandler) and _signed_session(handler, config)


def _signed_session(handler: WebSocketHandler, config: GateConfig) -> bool:
    """A websocket that offers bokeh's session token, signed by us and not expired."""
    if config.session_key is None:
        return False
    from bokeh.util.token import check_token_signature, get_token_payload

    offered = handler.request.headers.get("Sec-WebSocket-Protocol", "")
    parts = [part.strip() for part in offered.split(",")]
    if len(parts) != 2 or parts[0] != "bokeh":
        return False
    try:
        if not check_token_signature(parts[1], secret_key=config.session_key, signed=True):
            return False
        expiry = get_token_payload(parts[1])["session_expiry"]
    except Exception:  # malformed: refused like a wrong signature
        return False
    now = calendar.timegm(dt.datetime.now(tz=dt.timezone.utc).timetuple())
    return bool(now < expiry)


def _gated(cls: type[RequestHandler], config: GateConfig) -> type[RequestHandler]:
    namespace: dict[str, Any] = {"gate": config}
    if issubclass(cls, WebSocketHandler):
        # any origin: the token (or signed session) is the protection, and the cookie is
        # SameSite=Lax, so another site cannot ride on it; through a Jupyter proxy the
        # origin is the Jupyter server's, which the dashboard cannot know in advance
        namespace["check_origin"] = lambda self, origin: True
    return type(f"Gated{cls.__name__}", (TokenGate, cls), namespace)


def gate_all_routes(app: Application, config: GateConfig) -> None:
    """Put the token check in front of every handler the application routes to."""
    from bokeh.server.views.ico_handler import IcoHandler

    rules: list[Rule] = app.wildcard_router.rules
    for rule in rules:
        target = rule.target
        handler = isinstance(target, type) and issubclass(target, RequestHandler)
        # bokeh's favicon, which browsers ask for at the host's root, outside our prefix
        # and cookie path: public bytes, served to anyone rather than logged as a 403
        if handler and not issubclass(target, (TokenGate, IcoHandler)):
            rule.target = _gated(target, config)
