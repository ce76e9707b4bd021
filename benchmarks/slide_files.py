"""What a benchmark says about the slide file it reads, and the page-cache warm-up before it."""

from __future__ import annotations

import os
import time
from pathlib import Path


def warm_page_cache(path: Path) -> float:
    """Read the file once, so that every run and contender finds it in the OS page cache; seconds."""
    start = time.perf_counter()
    with open(path, "rb") as handle:
        while handle.read(64 << 20):
            pass
    return time.perf_counter() - start


def slide_file_record(path: Path, width: int, height: int) -> dict:
    """The slide's path, level-0 size, bytes, and whether the machine's RAM can hold the file."""
    file_bytes = path.stat().st_size
    ram_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "path": str(path),
        "width": width,
        "height": height,
        "bytes": file_bytes,
        "ram_bytes": ram_bytes,
        "fits_in_ram": file_bytes < ram_bytes,
        "page_cache": "file read once beforehand; not dropped (shared machine)",
    }
