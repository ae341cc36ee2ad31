"""A pool's status over HTTP: a live page, JSON, Server-Sent Events, Prometheus metrics.

Install the extra (``pip install 'taskpool[web]'``), then either mount the ASGI app::

    app.mount("/taskpool", taskpool.web.status_app(pool, token="..."))

or serve it from the pool's own loop::

    server = await pool.serve_status()        # loopback, a random token, printed
    print(server.url_with_token)

See docs/dashboards.md for the routes, the JSON, the events and the metrics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._app import StatusApp
from ._server import StatusServer, patch_uvicorn

if TYPE_CHECKING:
    from .._pool import FunctionPool

__all__ = ["StatusApp", "StatusServer", "status_app"]


def status_app(
    pool: FunctionPool,
    *,
    token: str | None = None,
    title: str | None = None,
) -> StatusApp:
    """An ASGI app showing ``pool``: a live page, JSON status, SSE, Prometheus, health.

    Mount it in any ASGI framework (``app.mount("/taskpool", status_app(pool))``) or
    serve it alone (:meth:`FunctionPool.serve_status`). It must run in the pool's event
    loop. With ``token``, every route but ``/healthz`` needs ``Authorization: Bearer
    <token>`` or ``?token=<token>``; without one, anyone who reaches it can read it (it
    never shows task arguments or results, only ``meta``).

    Raises:
        TypeError: ``pool`` is not a ``FunctionPool``, or ``token``/``title`` not a ``str``.
        ValueError: ``token`` is empty (pass ``None`` for no token).
    """
    return StatusApp(pool, token=token, title=title)


for _obj in (StatusApp, StatusServer, status_app):
    _obj.__module__ = "taskpool.web"

# Before uvicorn's graceful shutdown waits, end the event streams it serves (see _server).
patch_uvicorn()
del _obj
