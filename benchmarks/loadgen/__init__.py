"""The open-loop service benchmark's parts, shared by the drivers in ``benchmarks/``.

:mod:`~benchmarks.loadgen.load_spec` (what a run offers and measured),
:mod:`~benchmarks.loadgen.generator` (the open-loop HTTP client),
:mod:`~benchmarks.loadgen.servers` (the service under test, under uvicorn or granian),
:mod:`~benchmarks.loadgen.workload` (pre-fill and the ``POST /events`` requests),
:mod:`~benchmarks.loadgen.cpu` (process and host CPU accounting),
:mod:`~benchmarks.loadgen.sweep` (rising rates per configuration, the knee),
:mod:`~benchmarks.loadgen.artifacts` (random-weight models at ML-1M size) and
:mod:`~benchmarks.loadgen.plot`.
"""
