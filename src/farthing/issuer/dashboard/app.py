"""The operator dashboard: server-rendered pages (Jinja2, inline SVG charts, one
stylesheet, no script, no build step), mounted at ``/dashboard`` on the issuer.

Who may see it: a browser logged in with an operator token (:mod:`.session`), and by
default only from a loopback address (``IssuerConfig.dashboard_remote`` opens it to
others; the issuer itself binds 127.0.0.1 by default). Everything is read-only except
blocking an SZM card, which goes through :meth:`~farthing.issuer.szm_service.SzmService.
block_card` (the same operation as ``farthing issuer cards block``) and is audited.

Every answer carries a Content-Security-Policy without scripts (``default-src 'none'``,
``frame-ancestors 'none'``), ``Referrer-Policy: no-referrer``, ``X-Content-Type-Options:
nosniff``, ``X-Frame-Options: DENY`` and ``Cache-Control: no-store``. A POST must carry
the form's CSRF token, and is refused if its ``Origin`` or ``Sec-Fetch-Site`` says it
came from another site.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final
from urllib.parse import parse_qs, quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from farthing.core.clock import Clock
from farthing.core.encoding import b64url_decode
from farthing.core.errors import AccessDenied, FarthingError, MalformedMessage
from farthing.core.primitives import constant_time_eq, hmac_sha256, sha256
from farthing.issuer.auth import Operator
from farthing.issuer.dashboard.charts import Series, bar_chart
from farthing.issuer.dashboard.session import LOGIN_COOKIE, SESSION_COOKIE, Sessions
from farthing.issuer.dashboard.views import csv_rows, overview, tables
from farthing.issuer.service import IssuerServices
from farthing.observe.access import note_route

__all__ = ["PREFIX", "build_dashboard"]

PREFIX: Final = "/dashboard"
_TEMPLATES = Path(__file__).parent / "templates"
_LOOPBACK: Final = frozenset({"127.0.0.1", "::1", "localhost"})
_HEADERS: Final = [
    (b"content-security-policy",
     b"default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
     b"frame-ancestors 'none'; base-uri 'none'"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]  # fmt: skip
_CSV_LIMIT: Final = 10_000
_TABLES: Final = (
    "cards",
    "batches",
    "merchants",
    "deposits",
    "payword-users",
    "redemptions",
    "audit",
)
Page = Callable[[Request, Operator], Awaitable[Response]]
_PAGE_LIMIT: Final = 200
_STYLE = (_TEMPLATES / "style.css").read_bytes()


class _Secured:
    """Adds the security headers to every answer of the dashboard (errors included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] not in dict(_HEADERS)]
                message = {**message, "headers": headers + _HEADERS}
            await send(message)

        await self.app(scope, receive, secured)


def build_dashboard(
    services: IssuerServices,
    registry: CollectorRegistry,
    *,
    clock: Clock,
    allow_remote: bool = False,
) -> ASGIApp:
    """The dashboard app, to be mounted at :data:`PREFIX`."""
    key = hmac_sha256(services.config.keys.merchant_key_wrap, b"farthing/issuer/dashboard")
    sessions = Sessions(key, clock)
    env = Environment(loader=FileSystemLoader(_TEMPLATES), autoescape=select_autoescape(["html"]))

    def render(name: str, status: int = 200, **context: object) -> HTMLResponse:
        html = env.get_template(name).render(prefix=PREFIX, **context)
        return HTMLResponse(html, status_code=status)

    def operator_of(request: Request) -> Operator | None:
        digest = sessions.token_digest(request.cookies.get(SESSION_COOKIE))
        if digest is None:
            return None
        with services.store.transaction(readonly=True) as tx:
            row = tx.admin.operator_by_token_hash(digest)
        return None if row is None or not row.active else Operator(id=row.id, name=row.name)

    def login_page(status: int = 401, message: str | None = None) -> HTMLResponse:
        nonce = os.urandom(16).hex()
        response = render("login.html", status, csrf=nonce, message=message)
        response.set_cookie(
            LOGIN_COOKIE, nonce, max_age=600, path=PREFIX, httponly=True, samesite="strict"
        )
        return response

    def page(handler: Page, label: str) -> Callable[[Request], Awaitable[Response]]:
        """Checks the client's address and the session; the handler gets the operator."""

        async def endpoint(request: Request) -> Response:
            note_route(PREFIX + label)
            if not allow_remote and (
                request.client is None or request.client.host not in _LOOPBACK
            ):
                return render("refused.html", 403, message="the dashboard answers loopback only")
            if request.method == "POST" and not _same_site(request):
                return render("refused.html", 403, message="cross-site request refused")
            operator = await run_in_threadpool(operator_of, request)
            if operator is None:
                return login_page()
            return await handler(request, operator)

        return endpoint

    async def show_overview(request: Request, operator: Operator) -> Response:
        now = clock.now()
        view = await run_in_threadpool(
            overview, services, registry, now=now, span=6 * 3600, buckets=24
        )
        revenue = bar_chart(
            "Revenue",
            view.starts,
            [Series(m, f"s{i}", v) for i, (m, v) in enumerate(view.revenue.items())],
            "EUR",
        )
        money_in = bar_chart(
            "Money in",
            view.starts,
            [Series(m, f"s{i + 3}", v) for i, (m, v) in enumerate(view.money_in.items())],
            "EUR",
        )
        return render(
            "overview.html", operator=operator, view=view, revenue_chart=revenue,
            money_in_chart=money_in, csrf=sessions.csrf(request.cookies[SESSION_COOKIE]),
        )  # fmt: skip

    def table_page(name: str) -> Page:
        async def show(request: Request, operator: Operator) -> Response:
            card, batch = _ids(request)
            found = await run_in_threadpool(
                tables, services, card=card, batch=batch, limit=_PAGE_LIMIT
            )
            return render(
                "table.html", operator=operator, table=found[name],
                csrf=sessions.csrf(request.cookies[SESSION_COOKIE]),
                query=request.query_params.get("card", ""),
                notice=request.query_params.get("notice"),
            )  # fmt: skip

        return show

    async def export(request: Request, operator: Operator) -> Response:
        name = request.path_params["name"]
        card, batch = _ids(request)
        found = await run_in_threadpool(tables, services, card=card, batch=batch, limit=_CSV_LIMIT)
        if name not in found:
            return render("refused.html", 404, message="no such table")
        out = io.StringIO()
        csv.writer(out).writerows(csv_rows(found[name]))
        return Response(
            out.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="{name}.csv"'},
        )

    async def block(request: Request, operator: Operator) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=4)
        if not sessions.csrf_ok(request.cookies.get(SESSION_COOKIE), _one(form, "csrf")):
            return render("refused.html", 403, message="the form's CSRF token is missing or wrong")
        card_text = _one(form, "card") or ""
        try:
            card_id = b64url_decode(card_text, max_len=24)
            blocked = await run_in_threadpool(services.szm.block_card, operator.actor, card_id)
        except FarthingError:
            return render("refused.html", 404, message="no such card")
        notice = "blocked" if blocked else "was not active"
        target = f"{PREFIX}/cards?card={quote(card_text)}&notice={quote(notice)}"
        return RedirectResponse(target, status_code=303)

    async def login_form(request: Request) -> Response:
        note_route(PREFIX + "/login")
        if not allow_remote and not _loopback(request):
            return render("refused.html", 403, message="the dashboard answers loopback only")
        if request.method == "GET":
            return login_page(200)
        if not _same_site(request):
            return render("refused.html", 403, message="cross-site request refused")
        form = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=4)
        nonce = request.cookies.get(LOGIN_COOKIE)
        sent = _one(form, "csrf")
        if not nonce or not sent or not constant_time_eq(nonce.encode(), sent.encode()):
            return render("refused.html", 403, message="the form's CSRF token is missing or wrong")
        token = _one(form, "token") or ""
        try:
            await run_in_threadpool(services.operators.authenticate, f"Bearer {token}")
        except AccessDenied:
            return login_page(401, "That token is not accepted.")
        response = RedirectResponse(f"{PREFIX}/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE, sessions.issue(sha256(token.encode())), path=PREFIX,
            httponly=True, samesite="strict",
        )  # fmt: skip
        response.delete_cookie(LOGIN_COOKIE, path=PREFIX)
        return response

    async def logout(request: Request, operator: Operator) -> Response:
        response = RedirectResponse(f"{PREFIX}/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=PREFIX)
        return response

    async def style(request: Request) -> Response:
        return Response(_STYLE, media_type="text/css")

    routes = [
        Route("/", page(show_overview, "/"), methods=["GET"]),
        Route("/login", login_form, methods=["GET", "POST"]),
        Route("/logout", page(logout, "/logout"), methods=["POST"]),
        Route("/style.css", style, methods=["GET"]),
        Route("/cards/block", page(block, "/cards/block"), methods=["POST"]),
        Route("/export/{name}.csv", page(export, "/export"), methods=["GET"]),
    ]
    for name in (
        "cards",
        "batches",
        "merchants",
        "deposits",
        "payword-users",
        "redemptions",
        "audit",
    ):
        routes.append(Route(f"/{name}", page(table_page(name), f"/{name}"), methods=["GET"]))
    return _Secured(Starlette(routes=routes))


def _one(form: dict[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0] if values and len(values) == 1 else None


def _ids(request: Request) -> tuple[bytes | None, bytes | None]:
    def decoded(name: str) -> bytes | None:
        text = request.query_params.get(name, "").strip()
        if not text:
            return None
        try:
            return b64url_decode(text, max_len=24)
        except MalformedMessage:
            return b"\x00"  # matches nothing: an unreadable id finds no card

    return decoded("card"), decoded("batch")


def _loopback(request: Request) -> bool:
    return request.client is not None and request.client.host in _LOOPBACK


def _same_site(request: Request) -> bool:
    """False for a request a browser says came from another site."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return True  # no-referrer makes browsers send "null"; Sec-Fetch-Site and the token remain
    return origin == f"{request.url.scheme}://{request.url.netloc}"
