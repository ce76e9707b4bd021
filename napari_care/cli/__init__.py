"""``napari-care``: the command line (thin: parse, call the core, print)."""
