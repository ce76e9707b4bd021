"""Training loops, kept apart from the model modules.

Each loop is a generator that yields :class:`napari_care.core.progress.Progress` and returns
its result, and saves models with :mod:`napari_care.core.checkpoint`:

* :mod:`napari_care.core.train.mem`: MEM / CMEM pretraining of the mixed-magnification
  region encoder (``train_mem``), resumable from its checkpoints.
* :mod:`napari_care.core.train.mil`: an AB-MIL head on slide labels (``train_mil``), with
  predictions, attention per instance and test metrics.

Nothing is imported here, so ``import napari_care.core.train`` stays cheap (no torch).
"""
