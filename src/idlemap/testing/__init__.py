"""Workloads with known working sets (``workload``: real child processes;
``synth``: synthetic rounds for the record format and the analysis), used by
the tests, the benchmarks and ``idlemap demo``."""
