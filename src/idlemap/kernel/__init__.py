"""The thin kernel layer: one module per kernel interface.

Modules here read, decode and write kernel files.  They decide nothing and
print nothing; policy lives in ``idlemap.backends`` and above.
"""
