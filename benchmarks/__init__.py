"""Benchmarks that measure taskpool against its peers, side by side in one run.

Run them from the repository root::

    python -m benchmarks.run            # everything, markdown report on stdout
    python -m benchmarks.run --quick    # CI smoke mode, small sizes
    python -m benchmarks.bench_process --peers loky,pebble --workloads latency

See ``benchmarks/README.md`` for what each workload measures.
"""
