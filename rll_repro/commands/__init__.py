"""One module per ``rll-repro`` verb (see :mod:`rll_repro.cli`). Each is a thin call into the library."""
