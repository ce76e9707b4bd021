"""QuPath exchange: GeoJSON objects, reading and writing them, and region grids traced to polygons."""
