"""OpenTelemetry spans for a pool's tasks (the ``taskpool[otel]`` extra: ``opentelemetry-api``).

::

    import taskpool.otel

    async with FunctionPool(4, name="render") as pool:
        tracing = taskpool.otel.instrument(pool)   # the global tracer provider, or tracer_provider=
        with tracer.start_as_current_span("request"):
            await pool.add_task(render, page)      # request -> taskpool.submit render -> taskpool.run render
        tracing.uninstrument()                     # or: with taskpool.otel.instrument(pool): ...

Tracing is per pool and opt-in: a pool never instrumented pays one ``None`` check per task
added and one per task settled, and its workers one per call. While instrumented:

- ``taskpool.submit <fn>`` (``PRODUCER``): started and ended inside ``add_task`` /
  ``submit``, in the caller's current context (a child of the caller's span). Its W3C trace
  context (``propagate.inject``: ``traceparent``, ``tracestate``, baggage) is kept on the
  task and travels with the call to the worker.
- In the worker, that context is current while the call runs
  (``context.attach(propagate.extract(carrier))``), so spans the function makes are children
  of the submit span, given an SDK configured there (a process worker: by an
  ``initializer``). Without opentelemetry in a worker process, calls run as before.
- ``taskpool.run <fn>`` (``CONSUMER``): a child of the submit span, made **in the pool's
  process** when the task settles (that is where the application configured its SDK),
  from the times taken in the worker: it starts at the task's ``started_at`` and ends at
  its ``finished_at``. A failure sets status ``ERROR`` and records the exception.
- A task that settles without ever starting (cancelled or timed out while waiting, its
  arguments unsendable, the pool broken) gets no run span: ``taskpool.settle <fn>``
  (``INTERNAL``, zero length, at the settling time, a child of the submit span) says how it
  ended instead, since the submit span has ended long before.

Attributes: ``taskpool.pool`` (the pool's name), ``taskpool.task_id``, ``code.function``
(the function's qualified name) and ``code.namespace`` (its module) on every span;
``taskpool.worker_id`` and
``taskpool.outcome`` (``succeeded``, ``failed``, ``cancelled``) on the run and settle spans.

A submit span that is not recording (no SDK, or sampled out) still carries its context to
the worker, but no run span follows it (a sampler that respects its parent would drop it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import context as _otel_context
    from opentelemetry import propagate as _propagate
    from opentelemetry import trace as _trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TracerProvider
except ImportError as _missing:  # pragma: no cover - exercised in a subprocess without the extra
    raise ImportError("taskpool.otel needs opentelemetry-api: pip install 'taskpool[otel]'") from _missing

from ._chunks import run_chunk, run_chunk_async
from ._types import TaskState

if TYPE_CHECKING:
    from types import TracebackType

    from taskpool import FunctionPool

    from ._task import Task

__all__ = ["Instrumentation", "instrument"]

#: The instrumentation scope's name (``tracer_provider.get_tracer(SCOPE)``).
SCOPE = "taskpool.otel"

_OUTCOMES = {
    TaskState.SUCCEEDED: "succeeded",
    TaskState.FAILED: "failed",
    TaskState.CANCELLED: "cancelled",
}
_PRODUCER = SpanKind.PRODUCER
_CONSUMER = SpanKind.CONSUMER
_INTERNAL = SpanKind.INTERNAL
_FAILED = TaskState.FAILED


def instrument(pool: FunctionPool, *, tracer_provider: TracerProvider | None = None) -> Instrumentation:
    """Trace ``pool``'s tasks from now on (a pool already running included); returns the
    :class:`Instrumentation`, whose :meth:`~Instrumentation.uninstrument` stops it.

    ``tracer_provider``: where spans go; ``None`` uses the global one
    (``opentelemetry.trace.set_tracer_provider``; set later, it is still followed).
    Call it from the thread running the pool's event loop (or before the pool starts).

    Raises:
        TypeError: ``pool`` is not a ``FunctionPool``, or ``tracer_provider`` is not a
            ``TracerProvider``.
        ValueError: ``pool`` is instrumented already.
        RuntimeError: called from another thread than the pool's event loop's.
    """
    from taskpool import FunctionPool

    if not isinstance(pool, FunctionPool):
        raise TypeError(f"instrument() needs a FunctionPool, got {type(pool).__name__}")
    if tracer_provider is not None and not isinstance(tracer_provider, TracerProvider):
        raise TypeError(f"tracer_provider must be a TracerProvider, got {type(tracer_provider).__name__}")
    core = pool._core
    core.check_thread()
    if core.tracer is not None:
        raise ValueError(f"pool {pool.name!r} is instrumented already: uninstrument() it first")
    from taskpool import __version__

    inst = Instrumentation(pool, _trace.get_tracer(SCOPE, __version__, tracer_provider=tracer_provider))
    core.tracer = inst
    return inst


class Instrumentation:
    """A pool's tracing, made by :func:`instrument`; usable as a context manager (leaving
    the block uninstruments the pool).

    Attributes:
        pool: the instrumented pool.
    """

    __slots__ = ("_active", "_name", "_open", "_tracer", "pool")

    def __init__(self, pool: FunctionPool, tracer: _trace.Tracer) -> None:
        self.pool: FunctionPool = pool
        self._tracer = tracer
        self._name = pool.name
        self._active = True
        # Task id -> (its submit span's context, its function's attributes): the run span is
        # made at settling time, when the task no longer holds its function.
        self._open: dict[int, tuple[SpanContext, str, str | None]] = {}

    @property
    def active(self) -> bool:
        """True until :meth:`uninstrument`."""
        return self._active

    def uninstrument(self) -> None:
        """Stop tracing the pool: tasks added from now on get no spans, and tasks added
        before get no run span. Idempotent.

        Raises:
            RuntimeError: called from another thread than the pool's event loop's.
        """
        core = self.pool._core
        core.check_thread()
        if core.tracer is self:
            core.tracer = None
        self._active = False
        self._open.clear()

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.uninstrument()

    def __repr__(self) -> str:
        return f"<Instrumentation pool={self._name!r} {'active' if self._active else 'inactive'}>"

    # --- called by the pool (on its event loop) ---------------------------------------

    def task_added(self, task: Task[Any]) -> None:
        """``task`` was just made by ``add_task``/``submit``: its submit span, and the trace
        context its worker makes current. Never raises (a tracing failure must not refuse
        a task)."""
        try:
            name, module = _code(task.fn)
            attributes: dict[str, Any] = {
                "taskpool.pool": self._name,
                "taskpool.task_id": task.id,
                "code.function": name,
            }
            if module is not None:
                attributes["code.namespace"] = module
            span = self._tracer.start_span(f"taskpool.submit {name}", kind=_PRODUCER, attributes=attributes)
            carrier: dict[str, str] = {}
            _propagate.inject(carrier, context=_trace.set_span_in_context(span))
            recording = span.is_recording()  # (asked before end(): an ended span records no more)
            span.end()
        except Exception:
            return
        if carrier:
            task._trace = carrier
        if recording:
            self._open[task.id] = (span.get_span_context(), name, module)

    def task_settled(self, task: Task[Any], state: TaskState, exc: BaseException | None) -> None:
        """``task`` settled: its run span, from the worker's own start and end times (or,
        had it never started, its settle span). Never raises."""
        opened = self._open.pop(task.id, None)
        if opened is None:
            return  # added before instrumenting, or not recorded
        sc, name, module = opened
        try:
            parent = _trace.set_span_in_context(NonRecordingSpan(sc))
            attributes: dict[str, Any] = {
                "taskpool.pool": self._name,
                "taskpool.task_id": task.id,
                "code.function": name,
                "taskpool.outcome": _OUTCOMES[state],
            }
            if module is not None:
                attributes["code.namespace"] = module
            if task._worker_id is not None:
                attributes["taskpool.worker_id"] = task._worker_id
            started, finished = task._started_at, task.finished_at
            if started is None:
                at = _ns(finished) if finished is not None else None
                span = self._tracer.start_span(
                    f"taskpool.settle {name}", parent, kind=_INTERNAL, attributes=attributes, start_time=at
                )
                end = at
            else:
                start = _ns(started)
                end = max(start, _ns(finished)) if finished is not None else None
                span = self._tracer.start_span(
                    f"taskpool.run {name}", parent, kind=_CONSUMER, attributes=attributes, start_time=start
                )
            if state is _FAILED:
                if exc is not None:
                    span.record_exception(exc, timestamp=end)
                span.set_status(Status(StatusCode.ERROR, _describe(exc)))
            span.end(end_time=end)
        except Exception:
            return


def _code(fn: Any) -> tuple[str, str | None]:
    """A function's ``(qualified name, module)`` (through ``functools.partial``; a chunk of
    ``map`` is named by the mapped function); a callable object's type's. Never cached: a
    cache would keep closures, and what they hold, alive."""
    inner: Any = fn
    for _ in range(8):  # functools.partial and friends (bounded: a .func cycle ends here)
        nested = getattr(inner, "func", None)
        if nested is None or not callable(nested):
            break
        if (nested is run_chunk or nested is run_chunk_async) and getattr(inner, "args", None):
            nested = inner.args[0]  # partial(run_chunk, fn): map's chunk of fn
        inner = nested
    qualname = getattr(inner, "__qualname__", None)
    if not isinstance(qualname, str):
        qualname = type(inner).__qualname__
    module = getattr(inner, "__module__", None)
    return qualname, module if isinstance(module, str) else None


def _describe(exc: BaseException | None) -> str | None:
    if exc is None:
        return None
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:
        return type(exc).__name__


def _ns(t: float) -> int:
    """Epoch seconds -> epoch nanoseconds (OpenTelemetry's timestamps)."""
    return int(t * 1e9)


# --- in the worker ---------------------------------------------------------------------


def attach(carrier: dict[str, str]) -> object:
    """Make the trace context in ``carrier`` current (the workers do, around a traced call);
    returns the token for :func:`detach`, or None when the carrier could not be read (a
    misconfigured propagator must not fail the call). Never raises."""
    try:
        return _otel_context.attach(_propagate.extract(carrier))
    except Exception:
        return None


def detach(token: object) -> None:
    """Undo :func:`attach` (a None token: nothing to undo). Never raises (opentelemetry
    logs a token it cannot undo)."""
    if token is not None:
        _otel_context.detach(token)  # type: ignore[arg-type]
