"""Sparse 3D VAEs: a structure VAE on voxel occupancy and a texture VAE decoding 2D Gaussian
surfels per voxel (EarthCrafter's dual-VAE design). Built in the 3D release."""
