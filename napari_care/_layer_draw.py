"""Putting layers into a viewer without stalling it: one layer per event-loop turn, the
repaints held until all are in, and the one-time costs of a viewer's first draw paid ahead.

Only here does the plugin touch napari's Qt internals (the main window, the canvas, the
layer docks, the font atlas); each is looked up defensively, so a napari without one only
loses that optimisation.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from napari_care._layers import put_layer, unproxied


class OneCallPerTurn:
    """Calls functions on the GUI thread one per event-loop turn, so that a chain of GUI work
    (layer updates, warm-up) never holds the loop longer than its slowest call.

    Parameters
    ----------
    on_done
        Called with True after the last call, or with False when a call raised (the rest
        are dropped and the error goes on to napari's handler).
    parent
        A Qt object whose deletion (a closed viewer's window) ends the calls still waiting.
    """

    def __init__(self, on_done: Callable[[bool], None] | None = None, parent=None) -> None:
        from qtpy.QtCore import QTimer  # Qt loads with the viewer

        self.on_done = on_done
        self._calls: deque[Callable[[], Any]] = deque()
        self._timer = QTimer(parent)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)  # the next call after the events already waiting
        self._timer.timeout.connect(self._next)

    @property
    def pending(self) -> bool:
        """True while calls are waiting."""
        return bool(self._calls)

    def start(self, calls: Iterable[Callable[[], Any]]) -> None:
        """Queue ``calls`` in place of any still waiting (they are stale) and run the first next turn."""
        self._calls = deque(calls)
        if self._calls:
            self._timer.start()
        else:
            self._finished(True)

    def stop(self) -> None:
        """Drop the calls still waiting (``on_done`` gets False when there were any)."""
        if self._calls:
            self._calls.clear()
            self._timer.stop()
            self._finished(False)

    def _next(self) -> None:
        if not self._calls:
            return
        try:
            self._calls.popleft()()
        except Exception:
            self._calls.clear()
            self._finished(False)
            raise
        if self._calls:
            self._timer.start()
        else:
            self._finished(True)

    def _finished(self, complete: bool) -> None:
        if self.on_done is not None:
            self.on_done(complete)


class LayerDraw(OneCallPerTurn):
    """Puts layers into a viewer with :func:`put_layer`, one per event-loop turn.

    New layers do not become active (the user's selection stays). What a layer update
    repaints (the layer list, the layer controls, the canvas) is held still from the first
    layer to the last, then repaints in turns of its own, the canvas last: one canvas paint
    (never a frame that mixes two results) in a turn that holds nothing else. When layers are
    created the window's layout changes too, and the whole window is held instead. A new
    :meth:`start` replaces the layers still waiting (it puts all of its own).
    ``also_held``: more widgets held meanwhile (a dock whose progress bar would repaint alone).
    """

    def __init__(
        self, viewer, on_done: Callable[[bool], None] | None = None, also_held: Iterable = ()
    ) -> None:
        super().__init__(on_done, parent=qt_window(viewer))
        self.viewer = viewer
        self.also_held = list(also_held)

    def start(self, layers: Iterable[tuple[Any, dict, str]]) -> None:  # type: ignore[override]
        """Queue the (data, kwargs, layer_type) tuples ``layers``; the first goes in next turn."""
        layers = list(layers)
        window, canvas, docks = repainted_widgets(self.viewer)
        creates = any(kwargs["name"] not in self.viewer.layers for _, kwargs, _ in layers)
        hold_repaints([window] if creates else [*docks, *self.also_held, canvas], True)
        calls = [partial(put_layer, self.viewer, *layer, activate=False) for layer in layers]
        super().start(
            [
                *calls,
                partial(hold_repaints, [window, *docks, *self.also_held], False),
                partial(hold_repaints, [canvas], False),
            ]
        )

    def _finished(self, complete: bool) -> None:
        window, canvas, docks = repainted_widgets(self.viewer)
        hold_repaints([window, *docks, *self.also_held, canvas], False)  # after an error too
        super()._finished(complete)


def repainted_widgets(viewer) -> tuple[Any, Any, list]:
    """The viewer's Qt main window, its canvas widget, and its layer list and layer controls
    docks (what a layer update repaints besides the canvas); None or empty without a window."""
    canvas = getattr(_qt_viewer_part(viewer, "canvas"), "native", None)
    docks = [_qt_viewer_part(viewer, "dockLayerList"), _qt_viewer_part(viewer, "dockLayerControls")]
    return qt_window(viewer), canvas, [dock for dock in docks if dock is not None]


def hold_repaints(widgets: Iterable, held: bool) -> None:
    """Stop (``held``) or restart the repainting of Qt ``widgets`` (None entries are skipped).

    Layers updated over several event-loop turns then appear together in one repaint, and
    the turns between them do not each pay for one (tens of ms in software rendering). Qt's
    ``setUpdatesEnabled``, made for this; re-enabling schedules the repaint.
    """
    for widget in widgets:
        try:
            if widget is not None and widget.updatesEnabled() == held:
                widget.setUpdatesEnabled(not held)
        except RuntimeError:  # its C++ side is gone (a closed dock): nothing to hold, go on with the rest
            continue


def glyph_loaders(viewer, characters: str) -> list[Callable[[], Any]]:
    """One call per character that renders its glyph into the viewer's font atlas.

    napari draws layer text (a Shapes layer's labels) from a signed-distance-field atlas that
    renders each glyph on the CPU the first time it is drawn, a few ms each; a first draw with
    twenty new characters pays for all of them. Made ahead, the draw finds them ready. The font
    is the one napari's text visuals use (the viewer's overlay font, not bold, not italic);
    an empty list comes back without a window (or from a napari that keeps its fonts elsewhere).
    """
    manager = _qt_viewer_part(viewer, "_font_manager")
    face = _qt_viewer_part(viewer, "_overlay_font")
    if manager is None or face is None or not hasattr(manager, "get_font"):
        return []
    font = manager.get_font(face, False, False)
    return [lambda c=character: font[c] for character in dict.fromkeys(characters)]


def warm_up_line_visuals() -> None:
    """Make vispy's dash patterns (cached after the first line visual: ~0.1 s of numpy, thread-safe)."""
    from vispy.visuals.line.dash_atlas import DashAtlas  # napari's GUI loads with the viewer

    DashAtlas()


def qt_window(viewer) -> Any:
    """The viewer's Qt main window, or None for a viewer without one."""
    return getattr(getattr(unproxied(viewer), "window", None), "_qt_window", None)


def _qt_viewer_part(viewer, name: str) -> Any:
    """``viewer.window._qt_viewer.<name>``, or None for a viewer without a Qt window."""
    qt_viewer = getattr(getattr(unproxied(viewer), "window", None), "_qt_viewer", None)
    return getattr(qt_viewer, name, None)
