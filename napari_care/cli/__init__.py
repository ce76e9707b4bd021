"""``napari-care``: the command line (thin: parse, call the core, print).

Each command imports the core inside its body (``# lazy: CLI start-up``): with them at the
top, ``napari-care --help`` takes 2 s (dask.array, scipy.stats, torch for training) instead
of 0.14 s.
"""
