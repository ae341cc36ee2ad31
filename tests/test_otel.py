"""OpenTelemetry spans for submit and run (taskpool.otel), and the context in the worker.

Spans go to an SDK ``TracerProvider`` of the test's own (``InMemorySpanExporter`` through a
``SimpleSpanProcessor``: exported as each span ends), passed to ``instrument()``; the global
provider is never set. The task functions are module-level so a process worker imports them.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider, SpanKind, StatusCode

import taskpool.otel
from taskpool import FunctionPool, Task, TaskCancelled
from taskpool._frames import encode_frame
from taskpool._wire import FMT_TUPLE, Call, Calls, TracedCall, child_parser
from taskpool.testing import wait_gate

from ._support import Gate, settle

# --- task functions (module-level: a process worker imports them) ----------------------


def seen_context() -> tuple[str, str]:
    """The trace and span ids current in the worker while the call runs (hex)."""
    sc = trace.get_current_span().get_span_context()
    return format(sc.trace_id, "032x"), format(sc.span_id, "016x")


async def async_seen_context() -> tuple[str, str]:
    await asyncio.sleep(0)  # across a suspension too
    return seen_context()


def seen_traceparent() -> str | None:
    """The traceparent a call made from the task would send on."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def nap(seconds: float) -> float:
    time.sleep(seconds)  # the call's own run time, measured by the run span
    return seconds


def double(x: int) -> int:
    return 2 * x


def fail(message: str) -> None:
    raise ValueError(message)


def make_span(provider: TracerProvider) -> None:
    with provider.get_tracer("user").start_as_current_span("user.work"):
        pass


async def async_make_span(provider: TracerProvider) -> None:
    await asyncio.sleep(0)
    with provider.get_tracer("user").start_as_current_span("user.work"):
        await asyncio.sleep(0)


# --- helpers --------------------------------------------------------------------------


class Spans:
    """The test's provider and what it exported."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("test")

    def all(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def of(self, task: Task[Any], prefix: str) -> list[ReadableSpan]:
        return [
            s
            for s in self.all()
            if s.name.startswith(prefix) and s.attributes is not None and s.attributes["taskpool.task_id"] == task.id
        ]

    def one(self, task: Task[Any], prefix: str) -> ReadableSpan:
        (span,) = self.of(task, prefix)
        return span


@pytest.fixture
def spans() -> Iterator[Spans]:
    s = Spans()
    yield s
    s.provider.shutdown()


def _ids(span: ReadableSpan | trace.Span) -> tuple[str, str]:
    sc = span.get_span_context()
    assert sc is not None
    return format(sc.trace_id, "032x"), format(sc.span_id, "016x")


def _ns(t: float | None) -> int:
    assert t is not None
    return int(t * 1e9)


# --- spans -----------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("fn", [seen_context, async_seen_context])
async def test_submit_and_run_spans_and_the_context_in_the_worker(kind: str, spans: Spans, fn: Any) -> None:
    async with FunctionPool(2, worker=kind, name="traced") as pool:
        taskpool.otel.instrument(pool, tracer_provider=spans.provider)  # a pool already running
        with spans.tracer.start_as_current_span("request") as parent:
            task = pool.add_task(fn)
        seen = await task
    submit = spans.one(task, "taskpool.submit ")
    run = spans.one(task, "taskpool.run ")
    assert submit.name == f"taskpool.submit {fn.__qualname__}"
    assert run.name == f"taskpool.run {fn.__qualname__}"
    assert (submit.kind, run.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER)
    # request -> submit -> run, one trace
    assert submit.parent is not None and run.parent is not None
    assert submit.parent.span_id == parent.get_span_context().span_id
    assert run.parent.span_id == submit.context.span_id
    assert _ids(submit)[0] == _ids(run)[0] == _ids(parent)[0]
    # In the worker, the submit span's context was current (trace and span id).
    assert tuple(seen) == _ids(submit)
    assert submit.attributes == {
        "taskpool.pool": "traced",
        "taskpool.task_id": task.id,
        "code.function": fn.__qualname__,
        "code.namespace": __name__,
    }
    assert run.attributes is not None
    assert run.attributes["taskpool.outcome"] == "succeeded"
    assert run.attributes["taskpool.worker_id"] == task.worker_id
    assert run.attributes["code.function"] == fn.__qualname__
    assert run.status.status_code is StatusCode.UNSET
    assert task._trace is not None and "traceparent" in task._trace


@pytest.mark.asyncio
async def test_a_call_in_the_worker_sends_the_submit_spans_traceparent(kind: str, spans: Spans) -> None:
    async with FunctionPool(1, worker=kind) as pool:
        taskpool.otel.instrument(pool, tracer_provider=spans.provider)
        with spans.tracer.start_as_current_span("request"):
            task = pool.add_task(seen_traceparent)
        traceparent = await task
    submit = spans.one(task, "taskpool.submit ")
    trace_id, span_id = _ids(submit)
    assert traceparent == f"00-{trace_id}-{span_id}-{submit.context.trace_flags:02x}"


@pytest.mark.asyncio
async def test_the_run_span_has_the_calls_own_times(kind: str, spans: Spans) -> None:
    async with FunctionPool(1, worker=kind) as pool:
        taskpool.otel.instrument(pool, tracer_provider=spans.provider)
        task = pool.add_task(nap, 0.05)
        assert await task == 0.05
    rec = task.record
    submit = spans.one(task, "taskpool.submit ")
    run = spans.one(task, "taskpool.run ")
    assert submit.parent is None  # no span was current: the submit span starts a trace
    assert run.parent is not None and run.parent.span_id == submit.context.span_id
    assert (run.start_time, run.end_time) == (_ns(rec.started_at), _ns(rec.finished_at))
    assert run.start_time is not None and run.end_time is not None
    assert submit.end_time is not None and submit.end_time <= run.start_time  # submitted before it ran
    assert 0.05 <= (run.end_time - run.start_time) / 1e9 < 5.0


@pytest.mark.asyncio
async def test_a_failing_task_gives_an_error_run_span_with_the_exception(kind: str, spans: Spans) -> None:
    async with FunctionPool(1, worker=kind) as pool:
        taskpool.otel.instrument(pool, tracer_provider=spans.provider)
        task = pool.add_task(fail, "boom")
        assert isinstance(await settle(task), ValueError)
    run = spans.one(task, "taskpool.run ")
    assert run.status.status_code is StatusCode.ERROR
    assert run.status.description == "ValueError: boom"
    assert run.attributes is not None and run.attributes["taskpool.outcome"] == "failed"
    (event,) = run.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert (event.attributes["exception.type"], event.attributes["exception.message"]) == ("ValueError", "boom")
    assert "boom" in str(event.attributes["exception.stacktrace"])


@pytest.mark.asyncio
async def test_a_task_cancelled_before_it_started_gets_no_run_span(kind: str, spans: Spans) -> None:
    async with FunctionPool(1, worker=kind) as pool, Gate() as gate:
        taskpool.otel.instrument(pool, tracer_provider=spans.provider)
        blocker = pool.add_task(wait_gate, gate.path, "b")
        await gate.arrived("b")
        waiting = pool.add_task(seen_context)  # behind it: never starts
        assert waiting.cancel()
        gate.release("b")
        await blocker
        assert isinstance(await settle(waiting), TaskCancelled)
    assert spans.of(waiting, "taskpool.run ") == []
    submit = spans.one(waiting, "taskpool.submit ")
    settled = spans.one(waiting, "taskpool.settle ")
    assert settled.parent is not None and settled.parent.span_id == submit.context.span_id
    assert settled.attributes is not None and settled.attributes["taskpool.outcome"] == "cancelled"
    assert "taskpool.worker_id" not in settled.attributes
    assert settled.start_time == settled.end_time == _ns(waiting.finished_at)
    assert spans.one(blocker, "taskpool.run ").attributes is not None


@pytest.mark.asyncio
async def test_a_running_task_cancelled_gets_a_run_span_saying_so(kind: str, spans: Spans) -> None:
    async with FunctionPool(1, worker=kind) as pool, Gate() as gate:
        taskpool.otel.instrument(pool, tracer_provider=spans.provider)
        task = pool.add_task(wait_gate, gate.path, "t")
        await gate.arrived("t")
        task.cancel()
        assert isinstance(await settle(task), TaskCancelled)
        await gate.hung_up("t")
    run = spans.one(task, "taskpool.run ")
    assert run.attributes is not None and run.attributes["taskpool.outcome"] == "cancelled"
    assert run.status.status_code is StatusCode.UNSET
    assert spans.of(task, "taskpool.settle ") == []


@pytest.mark.asyncio
@pytest.mark.parametrize("kind_", ["inline", "thread"])
@pytest.mark.parametrize("fn", [make_span, async_make_span])
async def test_spans_the_task_makes_are_children_of_the_submit_span(kind_: str, fn: Any, spans: Spans) -> None:
    # Same process: the task can use the test's own provider (a process worker would need
    # an SDK of its own; the context it gets is checked above on every kind).
    async with FunctionPool(1, worker=kind_) as pool:
        taskpool.otel.instrument(pool, tracer_provider=spans.provider)
        with spans.tracer.start_as_current_span("request"):
            task = pool.add_task(fn, spans.provider)
        await task
    (work,) = [s for s in spans.all() if s.name == "user.work"]
    submit = spans.one(task, "taskpool.submit ")
    assert work.parent is not None and work.parent.span_id == submit.context.span_id
    assert _ids(work)[0] == _ids(submit)[0]


@pytest.mark.asyncio
async def test_the_context_does_not_leak_into_the_next_task(kind: str, spans: Spans) -> None:
    async with FunctionPool(1, worker=kind) as pool:
        inst = taskpool.otel.instrument(pool, tracer_provider=spans.provider)
        with spans.tracer.start_as_current_span("request"):
            traced = await pool.add_task(seen_context)
        inst.uninstrument()
        with spans.tracer.start_as_current_span("request"):
            untraced_task = pool.add_task(seen_context)
        untraced = await untraced_task
        plain = await pool.add_task(async_seen_context)
    assert traced[0] != "0" * 32
    assert tuple(untraced) == tuple(plain) == ("0" * 32, "0" * 16)  # nothing current in the worker
    assert untraced_task._trace is None


@pytest.mark.asyncio
async def test_a_chunk_of_map_is_named_by_the_mapped_function(spans: Spans) -> None:
    async with FunctionPool(2, worker="thread") as pool:
        taskpool.otel.instrument(pool, tracer_provider=spans.provider)
        assert [x async for x in pool.map(double, range(10), chunksize=5)] == [2 * x for x in range(10)]
    names = {s.name for s in spans.all()}
    assert names == {"taskpool.submit double", "taskpool.run double"}
    assert len(spans.all()) == 4  # two chunks: a submit and a run span each


# --- instrument() and uninstrument() ----------------------------------------------------


@pytest.mark.asyncio
async def test_not_instrumented_tasks_carry_nothing_and_make_no_spans(kind: str, spans: Spans) -> None:
    async with FunctionPool(1, worker=kind) as pool:
        with spans.tracer.start_as_current_span("request"):
            task = pool.add_task(seen_context)
        assert task._trace is None
        assert tuple(await task) == ("0" * 32, "0" * 16)
    assert [s.name for s in spans.all()] == ["request"]


@pytest.mark.asyncio
async def test_uninstrument_stops_spans_even_for_tasks_already_added(spans: Spans) -> None:
    async with FunctionPool(1, worker="thread") as pool, Gate() as gate:
        with taskpool.otel.instrument(pool, tracer_provider=spans.provider) as inst:
            assert (inst.active, inst.pool) == (True, pool)
            task = pool.add_task(wait_gate, gate.path, "t")
            await gate.arrived("t")
        assert not inst.active
        assert pool._core.tracer is None
        inst.uninstrument()  # idempotent
        gate.release("t")
        await task
        after = await pool.add_task(seen_context)
    assert len(spans.of(task, "taskpool.submit ")) == 1
    assert spans.of(task, "taskpool.run ") == []
    assert tuple(after) == ("0" * 32, "0" * 16)


@pytest.mark.asyncio
async def test_instrument_checks_its_arguments(spans: Spans) -> None:
    async with FunctionPool(1, worker="inline") as pool:
        with pytest.raises(TypeError, match="FunctionPool"):
            taskpool.otel.instrument("pool")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="TracerProvider"):
            taskpool.otel.instrument(pool, tracer_provider=object())  # type: ignore[arg-type]
        inst = taskpool.otel.instrument(pool, tracer_provider=spans.provider)
        with pytest.raises(ValueError, match="instrumented already"):
            taskpool.otel.instrument(pool, tracer_provider=spans.provider)
        inst.uninstrument()
        again = taskpool.otel.instrument(pool, tracer_provider=spans.provider)  # once uninstrumented: fine
        assert pool._core.tracer is again
        again.uninstrument()


@pytest.mark.asyncio
async def test_without_an_sdk_no_spans_but_the_callers_context_still_reaches_the_worker(
    kind: str, spans: Spans
) -> None:
    async with FunctionPool(1, worker=kind) as pool:
        taskpool.otel.instrument(pool, tracer_provider=NoOpTracerProvider())
        lone = pool.add_task(seen_context)  # no context at all: nothing to carry
        with spans.tracer.start_as_current_span("request") as parent:
            task = pool.add_task(seen_context)
        seen = await task
        await lone
    assert lone._trace is None
    assert tuple(seen) == _ids(parent)  # the no-op submit span is the caller's context
    assert [s.name for s in spans.all()] == ["request"]


# --- the wire ---------------------------------------------------------------------------


def test_an_untraced_call_frame_is_unchanged() -> None:
    call = Call(7, 3, FMT_TUPLE, [1, "x"], [], None, [2], True)
    # The frame as it was before tracing existed: length, then [tag, id, fn, fmt, data,
    # bufs, define, drop, report].
    before = b"\x0e\x00\x00\x00\x99\x01\x07\x03\x01\x92\x01\xa1x\x90\xc0\x91\x02\xc3"
    assert b"".join(bytes(b) for b in encode_frame(call)) == before


def test_a_traced_call_carries_its_context_and_decodes_alone_and_in_a_batch() -> None:
    carrier = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    traced = TracedCall(8, 3, FMT_TUPLE, [1], [], None, [], False, carrier)
    plain = Call(9, 3, FMT_TUPLE, [2])
    wire = b"".join(bytes(b) for m in (traced, Calls([plain, traced])) for b in encode_frame(m))
    alone, batch = child_parser().feed(wire)
    assert type(alone) is TracedCall and alone.trace == carrier and alone.id == 8
    assert type(batch) is Calls
    assert [type(c) for c in batch.calls] == [Call, TracedCall]
    assert isinstance(batch.calls[1], TracedCall) and batch.calls[1].trace == carrier
    assert msgspec.structs.asdict(batch.calls[0]) == msgspec.structs.asdict(plain)


# --- without opentelemetry ----------------------------------------------------------------


def _run_without_otel(code: str) -> subprocess.CompletedProcess[str]:
    prelude = "import sys\nsys.modules['opentelemetry'] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        check=False,
    )


def test_importing_taskpool_otel_without_opentelemetry_names_the_extra() -> None:
    out = _run_without_otel(
        "try:\n"
        "    import taskpool.otel\n"
        "except ImportError as exc:\n"
        "    print('ImportError:', exc)\n"
        "else:\n"
        "    print('imported')\n"
    )
    assert out.returncode == 0, out.stderr
    assert "ImportError:" in out.stdout
    assert "taskpool[otel]" in out.stdout


def test_a_worker_process_without_opentelemetry_runs_traced_calls_untraced() -> None:
    out = _run_without_otel(
        "from taskpool import _context\n"
        "carrier = {'traceparent': '00-' + '1' * 32 + '-' + '2' * 16 + '-01'}\n"
        "token = _context.attach_trace(carrier)\n"
        "assert token is None and _context._otel is False\n"
        "_context.detach_trace(token)\n"
        "print('ok')\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
