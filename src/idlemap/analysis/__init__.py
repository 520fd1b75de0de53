"""Pure analysis: typed records and numpy arrays in, results out.  No I/O."""
