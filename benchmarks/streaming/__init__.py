"""The parts of ``benchmarks.bench_streaming`` (see its docstring): ``common`` (data, model),
``beam`` (a), ``consumer`` (b), ``latency`` (c, d)."""
