"""The status app mounted in web frameworks, and a web service that runs its work on a pool.

Each module is an ASGI app, run with any ASGI server, e.g.::

    TASKPOOL_STATUS_TOKEN=secret uvicorn taskpool.examples.web.fastapi_app:app

then ``curl -X POST localhost:8000/fib/25`` and open ``http://localhost:8000/taskpool/?token=secret``.

* :mod:`~taskpool.examples.web.starlette_app`, :mod:`~taskpool.examples.web.fastapi_app`,
  :mod:`~taskpool.examples.web.litestar_app`, :mod:`~taskpool.examples.web.django_asgi`:
  the pool made in the app's lifespan, the status page mounted at ``/taskpool``, and one
  endpoint that runs a task.
* :mod:`~taskpool.examples.web.service`: the recipe for a web service on a pool (FastAPI):
  a bounded queue answering 503, timeouts answering 504, a task cancelled when its client
  goes away, a bounded graceful shutdown.
* :mod:`~taskpool.examples.web.jobs`: the functions the tasks run (imported by process
  workers, so it imports nothing heavy).

Without ``TASKPOOL_STATUS_TOKEN`` each app makes a random token and prints the page's path
with it to stderr. Install the framework you want (``pip install fastapi``, ``litestar``,
``django``) besides ``taskpool[web]``.
"""
