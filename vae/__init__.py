"""Sparse 3D VAEs (EarthCrafter's dual-VAE design): :class:`StructureVAE` compresses sparse voxel
occupancy at ``L^3`` to a sparse latent at ``(L/8)^3``; :class:`TextureVAE` encodes per-voxel
appearance and decodes 2D Gaussian surfels per voxel. Sparse convolutions: :mod:`vae.sparse`
(spconv, or a pure-torch twin). Importing the package loads neither torch models nor spconv.
"""

__all__ = ["SparseTensor", "StructureVAE", "TAEF2", "TextureVAE", "voxel_metrics"]


def __getattr__(name: str):
    # lazy, so diffusers can resolve saved components as ("vae", class name) cheaply
    if name == "StructureVAE" or name == "voxel_metrics":
        from vae import structure

        return getattr(structure, name)
    if name == "TextureVAE":
        from vae.texture import TextureVAE

        return TextureVAE
    if name == "TAEF2":
        from vae.taef2 import TAEF2

        return TAEF2
    if name == "SparseTensor":
        from vae.sparse import SparseTensor

        return SparseTensor
    raise AttributeError(f"module 'vae' has no attribute {name!r}")
