# mypy: disable-error-code="import-untyped"
# (Django ships no type hints, and django-stubs is no dependency of this example.)
"""Django: the status app beside Django's ASGI handler, the pool run by the ASGI lifespan.

A whole (tiny) Django project in one file: settings made in code, one URL, one async
view. Run it like any Django ASGI project (the token comes from the environment)::

    TASKPOOL_STATUS_TOKEN=secret uvicorn taskpool.examples.web.django_asgi:application

then ``curl -X POST localhost:8000/fib/25`` and open ``http://localhost:8000/taskpool/?token=secret``.

Django's ASGI handler answers HTTP only: it has no startup/shutdown hook and no way to
mount another ASGI app. So, as a project's ``asgi.py`` would, :class:`ProjectApp` wraps
it: it answers the ASGI ``lifespan`` itself (the pool starts before the server takes
requests and closes after the last one: uvicorn, Hypercorn, Granian and gunicorn's
uvicorn worker all send it), sends ``/taskpool/...`` to the status app, and the rest to
Django. Starting the pool lazily on the first request instead (the way for a server
without lifespan, such as Daphne) leaves nobody to close it: its workers would be killed
at exit, not stopped, and the tasks they hold lost.

The view is ``async``, so Django runs it in the server's event loop, the pool's loop:
keep every middleware async-capable (Django's own are), or Django moves the view to a
thread and ``add_task`` refuses to run there. Since Django 5.0 a client that disconnects
cancels its view; the view then cancels its task, so no worker computes for nobody.
"""

from __future__ import annotations

import os
import secrets
import sys
from typing import Any

import django
from django.conf import settings

from taskpool import FunctionPool
from taskpool.examples.web.jobs import MAX_FIB, fib
from taskpool.web import StatusApp, status_app

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(32),
        ALLOWED_HOSTS=["localhost", "127.0.0.1", "[::1]"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[],
        MIDDLEWARE=[  # all async-capable: the view stays in the pool's loop
            "django.middleware.security.SecurityMiddleware",
            "django.middleware.common.CommonMiddleware",
        ],
    )
    django.setup()

# Imported once the settings are made: they read them.
from django.core.asgi import get_asgi_application
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.urls import path

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Any  # async () -> Message
Send = Any  # async (Message) -> None

#: The status page's token: from the environment, else a fresh one printed at startup.
TOKEN = os.environ.get("TASKPOOL_STATUS_TOKEN") or ""
#: Where the status app answers.
PREFIX = "/taskpool"


async def add_fib(request: HttpRequest, n: int) -> HttpResponse:
    """``POST /fib/<n>``: compute ``fib(n)`` on a worker and answer with the result."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    if n > MAX_FIB:
        return JsonResponse({"error": f"n must be <= {MAX_FIB}"}, status=422)
    pool = application.pool
    if pool is None:
        return JsonResponse({"error": "the pool is not running (the server sent no ASGI lifespan)"}, status=503)
    task = pool.add_task(fib, n, meta=f"fib({n})")
    try:
        result = await task
    finally:
        task.cancel()  # does nothing once it settled; else the client left (Django cancelled us)
    return JsonResponse({"task": task.id, "n": n, "result": result})


urlpatterns: list[Any] = [path("fib/<int:n>", add_fib)]


class ProjectApp:
    """The project's ASGI entry: the lifespan runs the pool; ``/taskpool`` is the status app.

    Attributes:
        pool: the running pool (``None`` before startup and after shutdown).
        status: its status app, made at startup.
    """

    def __init__(self, django_app: Any, prefix: str = PREFIX) -> None:
        self.django_app = django_app
        self.prefix = prefix
        self.pool: FunctionPool | None = None
        self.status: StatusApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection: ``lifespan``, the status app, or Django."""
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        root = scope.get("root_path", "")
        mount = root + self.prefix
        path_ = scope.get("path", "")
        if scope["type"] == "http" and self.status is not None and (path_ == mount or path_.startswith(mount + "/")):
            # The ASGI way to mount: the full path, the prefix added to root_path.
            await self.status({**scope, "root_path": mount}, receive, send)
            return
        await self.django_app(scope, receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        """Start the pool at the server's startup and close it at its shutdown."""
        while True:
            message: Message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # the server reports it and does not start
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        """Start the pool and make its status app."""
        token = TOKEN or secrets.token_urlsafe(18)
        if not TOKEN:
            print(f"taskpool status page: {self.prefix}/?token={token}", file=sys.stderr, flush=True)
        pool = FunctionPool(2, name="django-demo")  # process workers
        await pool.start()
        self.pool, self.status = pool, status_app(pool, token=token)

    async def shutdown(self) -> None:
        """Close the pool (its status app's event streams end with it)."""
        pool, self.pool = self.pool, None
        if self.status is not None:
            self.status.close()
        if pool is not None:
            await pool.aclose()


application: ProjectApp = ProjectApp(get_asgi_application())
