"""The mixed-magnification region layout, shared by the features files and the model (no torch).

A region is one 5x tile, 2 x 2 10x tiles and 4 x 4 20x tiles over the same footprint:
21 tokens, the 20x ones last, row-major within each magnification.
"""

MAGNIFICATIONS = (5, 10, 20)
MAGNIFICATION_NAMES = ("5x", "10x", "20x")
TILES_PER_SIDE = (1, 2, 4)  # tiles along a region's side at each magnification
N_TOKENS = sum(side * side for side in TILES_PER_SIDE)  # 21
FIRST_20X_TOKEN = N_TOKENS - TILES_PER_SIDE[-1] ** 2  # 5
