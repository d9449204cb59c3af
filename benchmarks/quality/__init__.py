"""Quality studies of the autoencoders against baselines, one module per study.

Each module has ``run(settings) -> dict`` returning JSON-serialisable figures; see
``benchmarks/bench_quality.py`` for the entry point and ``benchmarks/report.py`` for the report.
"""
