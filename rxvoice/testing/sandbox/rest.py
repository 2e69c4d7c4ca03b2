"""The sandbox's REST API: the few HTTP routes a bot library calls before its gateway.

Bot libraries log in over REST before they open the main gateway. discord.py
(and py-cord, nextcord) fetch the bot user (``GET /users/@me``) and the
application (``GET /oauth2/applications/@me``); disnake and py-cord ask
``GET /gateway`` for the gateway URL; sharded clients ask ``GET /gateway/bot``;
py-cord loads ``GET /soundboard-default-sounds`` before its ready event (an
empty list here). The sandbox answers exactly these, under ``/api/v<N>/``, on
the main gateway's port and TLS certificate, so ``api_url`` is
``https://127.0.0.1:PORT/api/v10``:

- every route needs ``Authorization: Bot <token>`` with a token of a sandbox bot
  (401 otherwise, as Discord answers a bad token);
- any other path is 404 and any other method 405, with Discord's JSON error body.

The HTTP is served by the ``websockets`` server through its ``process_request``
hook (which answers plain requests without a WebSocket upgrade), so requests
carry no body and every response closes its connection.
"""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from rxvoice.testing.sandbox.gateway import Bot, MainGateway

__all__ = ["API_PREFIX", "RestApi", "RestReply"]

#: Requests whose path starts with this are REST requests (the rest is the gateway).
API_PREFIX = "/api/"

# /api/v10/users/@me, /api/users/@me (Discord's default version): the route after the version.
_ROUTE = re.compile(r"^/api(?:/v\d+)?(/.*)$")
_SESSION_START_LIMIT = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}


@dataclass(frozen=True, slots=True)
class RestReply:
    """What the API answers: a status and a JSON body.

    Attributes:
        status: The HTTP status.
        body: The JSON body.
    """

    status: HTTPStatus
    body: object


def _error(status: HTTPStatus) -> RestReply:
    # Discord's error shape: {"message": "401: Unauthorized", "code": 0}.
    return RestReply(status, {"message": f"{status.value}: {status.phrase}", "code": 0})


class RestApi:
    """The REST routes, answered from the main gateway's bots.

    Args:
        gateway: The main-gateway stub (its bots are the accounts).
        gateway_base_url: The gateway URL without query (``wss://host:port``), as
            ``GET /gateway`` returns it.
        counters: Shared event counters (``rest_requests``, ``rest_unauthorized``,
            ``rest_not_found``).
        on_change: Called after every request.
    """

    def __init__(
        self,
        *,
        gateway: MainGateway,
        gateway_base_url: str,
        counters: collections.Counter[str],
        on_change: Callable[[], None],
    ) -> None:
        self._gateway = gateway
        self.gateway_base_url = gateway_base_url
        self._counters = counters
        self._on_change = on_change

    def __repr__(self) -> str:
        return f"RestApi(gateway_base_url={self.gateway_base_url!r})"

    def handle(self, method: str, target: str, authorization: str | None) -> RestReply:
        """Answer one request.

        Args:
            method: The HTTP method.
            target: The request target (path and query).
            authorization: The ``Authorization`` header, if any.
        """
        self._counters["rest_requests"] += 1
        try:
            return self._route(method, urlsplit(target).path, authorization)
        finally:
            self._on_change()

    def _route(self, method: str, path: str, authorization: str | None) -> RestReply:
        match = _ROUTE.match(path)
        route = match.group(1).rstrip("/") if match else None
        handlers: dict[str, Callable[[Bot], object]] = {
            "/users/@me": self._me,
            "/oauth2/applications/@me": self._application,
            "/gateway": self._gateway_url,
            "/gateway/bot": self._gateway_bot,
            "/soundboard-default-sounds": lambda _: [],
        }
        handler = handlers.get(route) if route is not None else None
        if handler is None:
            self._counters["rest_not_found"] += 1
            return _error(HTTPStatus.NOT_FOUND)
        if method != "GET":
            return _error(HTTPStatus.METHOD_NOT_ALLOWED)
        bot = self._bot(authorization)
        if bot is None:
            self._counters["rest_unauthorized"] += 1
            return _error(HTTPStatus.UNAUTHORIZED)
        return RestReply(HTTPStatus.OK, handler(bot))

    def _bot(self, authorization: str | None) -> Bot | None:
        if authorization is None or not authorization.startswith("Bot "):
            return None
        return self._gateway.bots.get(authorization.removeprefix("Bot ").strip())

    def _me(self, bot: Bot) -> dict[str, Any]:
        return self._gateway.me_object(bot)

    def _application(self, bot: Bot) -> dict[str, Any]:
        # A bot's application id is its user id (true of every application since 2018).
        return {
            "id": bot.user_id,
            "name": bot.name,
            "icon": None,
            "description": "",
            "summary": "",
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": self._gateway.user_object(bot.user_id, bot.name, bot=True),
            "team": None,
            "verify_key": "0" * 64,
            "flags": 0,
            "rpc_origins": [],
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "tags": [],
        }

    def _gateway_url(self, bot: Bot) -> dict[str, Any]:
        return {"url": self.gateway_base_url}

    def _gateway_bot(self, bot: Bot) -> dict[str, Any]:
        return {
            "url": self.gateway_base_url,
            "shards": 1,
            "session_start_limit": dict(_SESSION_START_LIMIT),
        }

    def respond(self, ws: ServerConnection, request: Request) -> Response:
        """Answer ``request`` as an HTTP response (the ``process_request`` hook)."""
        # websockets < 15 parses GET only and has no Request.method.
        method = getattr(request, "method", "GET")
        reply = self.handle(method, request.path, request.headers.get("Authorization"))
        response = ws.respond(reply.status, json.dumps(reply.body, separators=(",", ":")))
        # Exactly this value: discord.py decodes JSON only when it matches.
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        return response
