"""idlemap's benchmarks, one module each: run them from the repository root
as ``python -m bench.NAME`` (``--help`` says what each measures).  What they
share -- running in the test VM, timing, results -- is in bench/common.py."""
