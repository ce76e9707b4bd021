"""``python -m napari_care.cli``: the ``napari-care`` command."""

from napari_care.cli.app import main

main()
