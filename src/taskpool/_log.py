"""taskpool's logger: silent until the application configures logging.

Every message goes, at the moment it is logged, to one of two places:

* structlog, when the application configured it (``structlog.is_configured()``):
  ``structlog.get_logger(name)`` bound with the logger's keys, so the application's
  processors, renderers and ``structlog.testing.capture_logs()`` see it as before;
* else the standard library's ``logging.getLogger(name)``: ``"taskpool"``, or
  ``"taskpool.worker"`` for the lines workers print. The message reads
  ``"worker exited pool=p worker_id=1 reason=crashed"``; the keys are also attributes
  of the ``LogRecord`` (``extra``), with ``record.event`` the bare event.

A :class:`logging.NullHandler` on ``"taskpool"`` keeps Python's last-resort handler from
printing warnings when the application configured nothing: taskpool never prints by itself.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import structlog

__all__ = ["LOGGER_NAME", "WORKER_LOGGER_NAME", "Logger", "get_logger"]

#: The standard-library logger taskpool logs through.
LOGGER_NAME: Final = "taskpool"
#: Its child for the lines process workers print (``worker_output="log"``).
WORKER_LOGGER_NAME: Final = "taskpool.worker"

_root = logging.getLogger(LOGGER_NAME)
if not any(type(h) is logging.NullHandler for h in _root.handlers):
    _root.addHandler(logging.NullHandler())

# A key that names a LogRecord attribute cannot go in ``extra`` (logging raises KeyError):
# it is stored as ``taskpool_<key>`` instead.
_RESERVED: Final = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _text(value: Any) -> str:
    """A value as it appears in a message: a plain word bare, anything else as its repr."""
    if isinstance(value, str) and value and not any(c.isspace() or c in "='\"" for c in value):
        return value
    return repr(value)


class Logger:
    """A logger with structlog's call shape: ``log.info("event", key=value, ...)``.

    ``exc_info`` (True, an exception or an ``exc_info`` tuple) is passed through. Where
    the message goes is decided at each call (see the module's docstring), so
    configuring logging or structlog after a pool was created takes effect at once.
    Cheap when disabled: nothing is formatted for a level the stdlib logger ignores.
    """

    __slots__ = ("_bound", "_children", "_std", "context", "name")

    def __init__(self, name: str = LOGGER_NAME, /, **context: Any) -> None:
        self.name: str = name
        self.context: dict[str, Any] = context
        self._std = logging.getLogger(name)
        self._children: dict[str, Logger] = {}
        self._bound: tuple[object, Any] | None = None  # (structlog's config then, the bound logger)

    def bind(self, **values: Any) -> Logger:
        """A logger with the same name and ``values`` added to its keys."""
        return Logger(self.name, **{**self.context, **values})

    def child(self, suffix: str) -> Logger:
        """The logger ``<name>.<suffix>`` with the same keys (made once, then reused)."""
        child = self._children.get(suffix)
        if child is None:
            child = self._children[suffix] = Logger(f"{self.name}.{suffix}", **self.context)
        return child

    def debug(self, event: str, /, **kw: Any) -> None:
        """Log ``event`` at DEBUG."""
        self._log(logging.DEBUG, "debug", event, kw)

    def info(self, event: str, /, **kw: Any) -> None:
        """Log ``event`` at INFO."""
        self._log(logging.INFO, "info", event, kw)

    def warning(self, event: str, /, **kw: Any) -> None:
        """Log ``event`` at WARNING."""
        self._log(logging.WARNING, "warning", event, kw)

    def error(self, event: str, /, **kw: Any) -> None:
        """Log ``event`` at ERROR."""
        self._log(logging.ERROR, "error", event, kw)

    def exception(self, event: str, /, **kw: Any) -> None:
        """Log ``event`` at ERROR with ``exc_info`` (the exception being handled by default)."""
        kw.setdefault("exc_info", True)
        self._log(logging.ERROR, "exception", event, kw)

    def _log(self, level: int, method: str, event: str, kw: dict[str, Any]) -> None:
        if structlog.is_configured():
            # Bound once per configuration (binding costs ~3 µs; a filtered-out call on a
            # bound logger ~0.1 µs): a worker printing fast must not slow the loop.
            key = _structlog_config()
            bound = self._bound
            if bound is None or key is None or not _same(bound[0], key):
                bound = (key, structlog.get_logger(self.name, **self.context).bind())
                self._bound = bound
            getattr(bound[1], method)(event, **kw)
            return
        std = self._std
        if not std.isEnabledFor(level):
            return
        exc_info = kw.pop("exc_info", None)
        fields = {**self.context, **kw} if self.context else kw
        message = event + "".join(f" {k}={_text(v)}" for k, v in fields.items() if v is not None)
        extra = {f"taskpool_{k}" if k in _RESERVED else k: v for k, v in fields.items()}
        extra["event"] = event
        # stacklevel 3: the record names the line in taskpool that logged, not this one.
        std.log(level, message, exc_info=exc_info, extra=extra, stacklevel=3)


def _structlog_config() -> object:
    """Something that changes identity whenever ``structlog.configure`` is called.

    structlog keeps its configuration in one private object whose fields each
    ``configure()`` replaces; ``None`` (bind afresh every time) if that ever changes.
    """
    try:
        from structlog import _config

        c = _config._CONFIG
        return (c.default_processors, c.default_wrapper_class, c.logger_factory, c.default_context_class)
    except AttributeError:  # pragma: no cover - a structlog that keeps it elsewhere
        return None


def _same(a: object, b: object) -> bool:
    # The same configuration: the very same objects in each field.
    if not (isinstance(a, tuple) and isinstance(b, tuple)):
        return False
    return a[0] is b[0] and a[1] is b[1] and a[2] is b[2] and a[3] is b[3]


def get_logger(**context: Any) -> Logger:
    """The ``"taskpool"`` logger, bound with ``context`` (e.g. ``pool=<name>``)."""
    return Logger(LOGGER_NAME, **context)
