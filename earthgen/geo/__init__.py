"""Geospatial layer: vector features in a metric CRS, rasterization to the class table, OSM
reading."""
