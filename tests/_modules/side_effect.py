"""Imported only in workers by the tests: its top-level code records where it ran.

The parent test process never imports this module (the tests check ``sys.modules``).
"""

from __future__ import annotations

import os
import threading

_path = os.environ.get("TASKPOOL_TEST_IMPORT_LOG")
if _path:
    with open(_path, "a", encoding="utf-8") as _f:
        _f.write(f"{os.getpid()} {threading.get_ident()}\n")

imported_in = os.getpid()
calls = 0


def bump() -> int:
    global calls
    calls += 1
    return calls


def pid() -> int:
    return os.getpid()
