"""Cameras, the pure-torch 2DGS rasterizer (gsplat-compatible signature) and exporters. Built in
the 3D release."""
