"""File formats idlemap writes and reads: the record file (``record``) and
the idle_pages run-length stream (``idle_pages``).  Pure: they import the
records, analysis helpers and the kernel layer's constants, never a backend."""
