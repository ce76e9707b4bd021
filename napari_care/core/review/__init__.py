"""Review against annotations: agreement metrics, and a saved run reviewed against a GeoJSON file."""
