"""Condition encoders shared by the image, 3D and detection generators.

Each condition has a null (learned, or zero where documented) so any subset of conditions can be
given at inference and classifier-free guidance can drop each one. This package imports no
pipeline code; heavy models (text encoders) load only when constructed.

- :class:`MetadataEncoder`: numeric metadata (GSD in m/px, lat/lon in degrees, date, cloud cover)
  -> one embedding to add to the timestep embedding (DiffusionSat's idea).
- :class:`SentenceTextEncoder`, :class:`CLIPTextEncoder`: prompts -> token embeddings.
- :mod:`earthgen.conditioning.dense`: class maps -> one-hot, edges, road maps, normalised height.
"""

from earthgen.conditioning.metadata import METADATA_FIELDS, MetadataEncoder, sinusoidal_embedding

__all__ = ["METADATA_FIELDS", "MetadataEncoder", "sinusoidal_embedding"]


def __getattr__(name: str):  # text encoders import transformers lazily
    if name in ("SentenceTextEncoder", "CLIPTextEncoder", "TextEmbeddings", "load_text_encoder"):
        from earthgen.conditioning import text

        return getattr(text, name)
    raise AttributeError(name)
