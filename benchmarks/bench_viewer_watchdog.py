"""A stall watchdog for benchmarks of the viewer: which frames the GUI thread was in whenever
its event loop stalled (see ``bench_viewer_gigapixel.py``).

A 5 ms QTimer stamps the time on the GUI thread; a thread checks every 5 ms and, while the
stamp is older than :data:`STALL_MS`, samples the GUI thread's stack
(``sys._current_frames()``) and the innermost :data:`OTHER_DEPTH` frames of the other busy
threads (the one that held the GIL, when the GUI thread waited for it, is among them).
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np

STALL_MS = 50.0  # gaps longer than this are sampled
TICK_MS = 5
OTHER_DEPTH = 3  # frames kept of each other busy thread, innermost first ("inner < caller < ...")
IDLE_FILES = ("threading.py", "queue.py", "thread.py", "selectors.py")  # where an idle thread waits


class StallWatchdog:
    """Samples the GUI thread's stack whenever its 5 ms timer has not ticked for ``STALL_MS``.

    The timer's slot (:meth:`tick`) stamps the time; a thread checks every 5 ms and, while the
    stamp is older than the threshold, records the GUI thread's frames. A stall is closed by
    the next tick, with its length and the samples taken during it.
    """

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.main_id = threading.main_thread().ident
        self.ticks: list[float] = []
        self.stalls: list[dict] = []  # {"start", "ms", "samples": [[frame, ...], ...]}
        self._samples: list[list[str]] = []
        self._others: list[str] = []  # innermost frames of the other threads, sampled with the GUI thread
        self._last = time.perf_counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.timer = QTimer()
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self.tick)
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> None:
        self._last = time.perf_counter()
        self.timer.start()
        self._thread.start()

    def stop(self) -> None:
        self.timer.stop()
        self._stop.set()
        self._thread.join()

    def tick(self) -> None:
        now = time.perf_counter()
        with self._lock:
            gap_ms = (now - self._last) * 1000
            if gap_ms > STALL_MS:
                self.stalls.append(
                    {"start": self._last, "ms": gap_ms, "samples": self._samples, "others": self._others}
                )
            self._samples, self._others = [], []
            self._last = now
        self.ticks.append(now)

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            with self._lock:
                if (time.perf_counter() - self._last) * 1000 <= STALL_MS:
                    continue
            frames = sys._current_frames()
            frame = frames.get(self.main_id)
            if frame is None:
                continue
            stack = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in traceback.extract_stack(frame)]
            # the other threads as this one got the GIL: one of them held it (a worker's long call)
            others = [
                " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in stack[::-1])
                for ident, other in frames.items()
                if ident not in (self.main_id, threading.get_ident())
                for stack in [traceback.extract_stack(other)[-OTHER_DEPTH:]]
                if Path(stack[-1].filename).name not in IDLE_FILES
            ]
            with self._lock:
                self._samples.append(stack[::-1])  # innermost first
                self._others.extend(others)

    def longest_ms(self, since: float, until: float = float("inf")) -> float:
        """The longest gap between ticks that ended after ``since`` and began before ``until``."""
        ticks = np.asarray(self.ticks)
        gaps = np.diff(ticks) * 1000
        inside = (ticks[1:] > since) & (ticks[:-1] <= until)
        return float(gaps[inside].max()) if inside.any() else 0.0

    def causes(self, since: float, until: float = float("inf"), top: int = 2) -> list[dict]:
        """The ``top`` longest stalls that ended after ``since`` and began before ``until``, each
        with the frames most sampled in it."""
        stalls = [s for s in self.stalls if s["start"] + s["ms"] / 1000 > since and s["start"] <= until]
        out = []
        for stall in sorted(stalls, key=lambda s: -s["ms"])[:top]:
            counts = Counter(frame for sample in stall["samples"] for frame in dict.fromkeys(sample))
            n = max(len(stall["samples"]), 1)
            innermost = Counter(sample[0] for sample in stall["samples"] if sample)
            out.append(
                {
                    "ms": round(stall["ms"], 1),
                    "samples": len(stall["samples"]),
                    "innermost": [f"{frame} ({c}/{n})" for frame, c in innermost.most_common(3)],
                    "frames": [
                        f"{frame} ({c}/{n})"
                        for frame, c in counts.most_common(40)
                        if not frame.startswith(("bench_viewer", "threading.py", "__init__.py:"))
                    ][:8],
                    "other_threads": [
                        f"{frame} ({c})" for frame, c in Counter(stall["others"]).most_common(4)
                    ],
                }
            )
        return out
