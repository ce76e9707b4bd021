"""Trained AB-MIL heads applied in the viewer: loading a head (and its mixing encoder) and its
attention over a slide's patches or regions."""
