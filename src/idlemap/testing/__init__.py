"""Workloads with known working sets (``workload``: real child processes;
``synth``: synthetic rounds for the record format and the analysis), used by
the tests, the benchmarks and ``idlemap demo``; ``machine``: the swap and
cgroup set-ups the system tests and the benchmarks run them in; ``child``:
static C workloads built once per source, and the one way to end a child."""
