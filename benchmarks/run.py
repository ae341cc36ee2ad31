"""Run every benchmark (or ``--only core|process``) and print one markdown report.

Usage, from the repository root::

    python -m benchmarks.run                  # everything (about 6 minutes on 2 CPUs)
    python -m benchmarks.run --quick          # CI smoke mode
    python -m benchmarks.run --only process --json results.json > report.md

The report is ready to paste into ``docs/benchmarks.md``; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in {None, ""}:  # run as a script: python benchmarks/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _harness as h
from benchmarks import bench_core, bench_process

SUITES = {"core": bench_core, "process": bench_process}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", choices=sorted(SUITES), action="append", help="run only this suite")
    h.add_common_arguments(parser)
    ns = parser.parse_args(argv)
    opts = h.options_from(ns)
    chosen = ns.only or list(SUITES)
    h.check_names(
        opts,
        peers=[name for suite in chosen for name in SUITES[suite].PEER_NAMES],
        workloads=[name for suite in chosen for name in SUITES[suite].WORKLOAD_NAMES],
    )
    start = time.perf_counter()
    probe = h.probe_taskpool()
    if not probe.ok:
        h.progress(probe.skip_note())
    header = h.run_header(loop=opts.loop, quick=opts.quick, taskpool=probe)
    sections: list[h.Section] = []
    for name in chosen:
        sections.extend(SUITES[name].collect(opts, probe))
    footer: list[str] = []
    if "process" in chosen:
        footer += ["#### How each process peer is driven", "", *bench_process.peer_notes(), ""]
    footer += [h.leftover_line(), "", f"Total wall time: {time.perf_counter() - start:,.0f} s."]
    h.emit(opts, header, sections, footer, title="taskpool benchmarks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
