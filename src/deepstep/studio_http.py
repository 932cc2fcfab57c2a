"""What ``langgraph dev`` mounts in front of its API (``http.app`` in ``langgraph.json``): only Studio may call it.

The dev server listens on 127.0.0.1, but any web page the user opens can send requests there
from the browser, and a DNS-rebinding page can even read the answers. Two checks keep the API
to Studio and to local clients (the SDK, curl):

- the ``Host`` header must name the loopback address, so a rebound domain is refused (400);
- a browser's ``Origin`` must be Studio's or the server's own, so a foreign page cannot start a
  run at all: a CORS refusal alone would only hide the answer of a request that already ran.

``langgraph.json``'s ``http.cors`` allows the same Studio origins, so the server's CORS grant
(and its private-network grant) goes to Studio only.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

# The origins LangGraph Studio is served from (LangSmith's US and EU sites).
STUDIO_ORIGINS = ("https://smith.langchain.com", "https://eu.smith.langchain.com")
# Names that always mean this machine: a web page cannot rebind them to itself.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
# The CORS rules for langgraph.json's `http.cors`: Studio's origins only (langgraph dev's default is "*").
STUDIO_CORS = {
    "allow_origins": list(STUDIO_ORIGINS),
    "allow_methods": ["*"],
    "allow_headers": ["*"],
    "expose_headers": ["x-pagination-total", "x-pagination-next", "content-location"],
}


class StudioOriginOnly:
    """Refuse (403) any request whose ``Origin`` is neither Studio nor the server itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            same_origin = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}"
            if origin is not None and origin not in (*STUDIO_ORIGINS, same_origin):
                response = PlainTextResponse(f"origin {origin} may not call this server: only LangGraph Studio may", status_code=403)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


app = Starlette(
    middleware=[
        Middleware(TrustedHostMiddleware, allowed_hosts=list(LOOPBACK_HOSTS)),
        Middleware(StudioOriginOnly),
    ]
)
