"""What the benchmarks share: the servers under test, a streaming client, process groups,
statistics and report formatting. Each benchmark (``bench.compare``, ``bench.hotpath``,
``bench.residency``...) is a module of its own that runs phases with these."""
