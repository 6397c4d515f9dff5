"""Common pipeline tests in the style of diffusers' ``PipelineTesterMixin``
(tests/pipelines/test_pipelines_common.py): one set of properties applied to every pipeline.

:class:`PipelineTesterMixin` holds the tests (save/load round trip, batch vs single runs,
``callback_on_step_end``, output types, seeded determinism, the progress bar, tuple vs dataclass
output, rebuilding from ``pipe.components``); each ``Test...`` subclass provides the pipeline's
class, tiny components, inputs and the few pipeline-specific expectations (how many callback
calls, how long the progress bar is, what each output type looks like).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
from diffusers.utils import BaseOutput
from PIL import Image
from tiny_models import get_dummy_components

from earthgen.errors import UserInputError
from earthgen.pipelines.image import EarthImageOutput, EarthImagePipeline
from earthgen.pipelines.scene import EarthSceneOutput, EarthScenePipeline, window_starts

# --- comparing outputs ------------------------------------------------------------------------


def _leaves(x: Any, path: str = "") -> list[tuple[str, np.ndarray]]:
    """Every array of an output (dataclass, tuple, dict of arrays, PIL images, numbers), with
    where it sits: ``[(path, array)]`` in a fixed order."""
    if isinstance(x, torch.Tensor):
        return [(path, x.detach().cpu().numpy())]
    if isinstance(x, Image.Image):
        return [(path, np.asarray(x))]
    if isinstance(x, np.ndarray):
        return [(path, x)]
    if isinstance(x, Mapping):  # BaseOutput is an OrderedDict of its set fields
        keys = list(x.keys()) if isinstance(x, BaseOutput) else sorted(x)
        return [leaf for k in keys for leaf in _leaves(x[k], f"{path}.{k}")]
    if isinstance(x, (list, tuple)):
        return [leaf for i, v in enumerate(x) for leaf in _leaves(v, f"{path}[{i}]")]
    if x is None:
        return [(path, np.zeros(0))]
    return [(path, np.asarray(x, dtype=np.float64))]


def max_diff(a: Any, b: Any) -> float:
    """Largest absolute difference between two outputs of the same structure; ``inf`` when their
    structure or shapes differ."""
    la, lb = _leaves(a), _leaves(b)
    if [p for p, _ in la] != [p for p, _ in lb]:
        return float("inf")
    worst = 0.0
    for (_, x), (_, y) in zip(la, lb, strict=True):
        if x.shape != y.shape:
            return float("inf")
        if x.size:
            d = np.abs(x.astype(np.float64) - y.astype(np.float64))
            both_nan = np.isnan(d) & np.isnan(x.astype(np.float64)) & np.isnan(y.astype(np.float64))
            d = np.where(both_nan, 0.0, d)
            worst = max(worst, float(np.nan_to_num(d, nan=np.inf).max()))
    return worst


def assert_outputs_close(a: Any, b: Any, atol: float = 0.0) -> None:
    """``a`` and ``b`` have the same structure and shapes and differ by at most ``atol``."""
    d = max_diff(a, b)
    assert d <= atol, f"outputs differ by {d} (allowed {atol})"


def assert_outputs_differ(a: Any, b: Any, min_diff: float = 1e-4) -> None:
    """``a`` and ``b`` differ (in structure, a shape, or by more than ``min_diff`` somewhere)."""
    d = max_diff(a, b)
    assert d > min_diff, f"outputs differ by only {d}"


# --- the common tests -------------------------------------------------------------------------


class PipelineTesterMixin:
    """The common tests. A subclass sets ``pipeline_class``, ``output_class``, ``output_types``
    (the supported ``output_type`` values, the default first), ``bad_output_types`` and
    ``callback_kwargs_keys`` and implements the ``get_*``/``expected_*``/``check_*`` hooks."""

    pipeline_class: type
    output_class: type
    output_types: tuple[str, ...]
    bad_output_types: tuple[str, ...]
    callback_kwargs_keys: frozenset[str]
    save_load_atol: float = 1e-5
    batch_atol: float = 1e-4

    # hooks ------------------------------------------------------------------------------------

    def get_dummy_components(self) -> dict:
        """Tiny components for ``pipeline_class(**components)``; the same weights every call."""
        raise NotImplementedError

    def get_dummy_inputs(self, seed: int = 0) -> dict:
        """Keyword arguments of one cheap call, with a fresh CPU generator seeded ``seed``."""
        raise NotImplementedError

    def get_batch_cases(self, seed: int = 0) -> list[tuple[dict, list[dict]]]:
        """``[(batch_inputs, [single_inputs, ...])]``: calls whose i-th output equals the i-th
        single call's."""
        raise NotImplementedError

    def batch_item(self, output: Any, i: int) -> Any:
        """The i-th sample of a batched output, as a batch of one."""
        raise NotImplementedError

    def expected_progress_total(self, pipe: Any, inputs: dict) -> int:
        """The progress bar's total (and final count) for ``inputs``."""
        raise NotImplementedError

    def expected_callback_calls(self, pipe: Any, inputs: dict) -> list[tuple[int, float, dict]]:
        """``[(step, t, fixed kwargs)]`` of every ``callback_on_step_end`` call, in order."""
        raise NotImplementedError

    def check_outputs(self, outputs: dict[str, Any], inputs: dict) -> None:
        """Assert the documented type/shape of each ``output_type``'s output (``outputs``:
        output_type -> ``output`` of ``return_dict=True``) and that they agree."""
        raise NotImplementedError

    # helpers ----------------------------------------------------------------------------------

    def get_pipeline(self, progress: bool = False) -> Any:
        """A fresh pipeline from the dummy components (progress bar off unless ``progress``)."""
        pipe = self.pipeline_class(**self.get_dummy_components())
        if not progress:
            pipe.set_progress_bar_config(disable=True)
        return pipe

    # tests ------------------------------------------------------------------------------------

    def test_save_load_local(self, tmp_path) -> None:
        """save_pretrained -> from_pretrained: the same component classes and config, and the
        same output for the same inputs."""
        pipe = self.get_pipeline()
        out = pipe(**self.get_dummy_inputs())
        pipe.save_pretrained(tmp_path / "pipe")
        loaded = self.pipeline_class.from_pretrained(tmp_path / "pipe")
        loaded.set_progress_bar_config(disable=True)
        assert {k: type(v) for k, v in loaded.components.items()} == {
            k: type(v) for k, v in pipe.components.items()
        }
        own = {
            k: v
            for k, v in pipe.config.items()
            if not k.startswith("_") and k not in pipe.components
        }
        assert {k: loaded.config[k] for k in own} == own
        assert_outputs_close(loaded(**self.get_dummy_inputs()), out, self.save_load_atol)

    def test_components_function(self) -> None:
        """``pipe.components`` holds every component ``__init__`` takes, and rebuilding the
        pipeline from it gives the same output."""
        pipe = self.get_pipeline()
        params = inspect.signature(self.pipeline_class.__init__).parameters
        takes = {
            k
            for k, v in params.items()
            if k != "self" and (v.default is inspect.Parameter.empty or v.default is None)
        }
        assert set(pipe.components) == takes
        again = self.pipeline_class(**pipe.components)
        again.set_progress_bar_config(disable=True)
        assert_outputs_close(again(**self.get_dummy_inputs()), pipe(**self.get_dummy_inputs()))

    def test_inference_batch_single_identical(self) -> None:
        """A batch gives what the single calls give, sample by sample."""
        pipe = self.get_pipeline()
        for batch_inputs, singles in self.get_batch_cases():
            out = pipe(**batch_inputs)
            for i, single in enumerate(singles):
                assert_outputs_close(
                    self.batch_item(out, i), self.batch_item(pipe(**single), 0), self.batch_atol
                )
            assert_outputs_differ(self.batch_item(out, 0), self.batch_item(out, 1))

    def test_seeded_determinism(self) -> None:
        """The same seed gives the same output bit for bit; another seed another output."""
        pipe = self.get_pipeline()
        a = pipe(**self.get_dummy_inputs(seed=0))
        assert_outputs_close(pipe(**self.get_dummy_inputs(seed=0)), a)
        assert_outputs_differ(pipe(**self.get_dummy_inputs(seed=1)), a)

    def test_callback_on_step_end(self) -> None:
        """The callback runs once per solver step with the documented step, t and kwargs; a
        callback returning nothing, ``{}`` or the latents it got changes nothing."""
        pipe = self.get_pipeline()
        base = pipe(**self.get_dummy_inputs())
        calls: list[tuple[int, float, dict]] = []

        def record(p: Any, step: int, t: Any, kwargs: dict) -> dict:
            assert p is pipe
            assert set(kwargs) == self.callback_kwargs_keys
            lat = kwargs["latents"]
            assert isinstance(lat, torch.Tensor) and bool(torch.isfinite(lat).all())
            calls.append((step, float(t), {k: v for k, v in kwargs.items() if k != "latents"}))
            return {"latents": lat}

        inputs = self.get_dummy_inputs()
        out = pipe(**inputs, callback_on_step_end=record)
        expected = self.expected_callback_calls(pipe, inputs)
        assert [(s, kw) for s, _, kw in calls] == [(s, kw) for s, _, kw in expected]
        np.testing.assert_allclose([t for _, t, _ in calls], [t for _, t, _ in expected], atol=1e-6)
        assert_outputs_close(out, base)
        for ret in (None, {}):
            assert_outputs_close(
                pipe(**self.get_dummy_inputs(), callback_on_step_end=lambda *a, r=ret: r), base
            )

    def test_callback_replaces_latents(self) -> None:
        """Latents returned by the callback replace the sampler's state: zeroing them at the
        first step changes the output."""
        pipe = self.get_pipeline()
        base = pipe(**self.get_dummy_inputs())
        seen: list[int] = []

        def zero_first(p: Any, step: int, t: Any, kwargs: dict) -> dict:
            seen.append(step)
            return {"latents": torch.zeros_like(kwargs["latents"])} if len(seen) == 1 else {}

        assert_outputs_differ(
            pipe(**self.get_dummy_inputs(), callback_on_step_end=zero_first), base
        )
        assert len(seen) > 1

    def test_output_types(self) -> None:
        """Every supported ``output_type`` gives its documented type and shape (one seed, one
        image/scene in every type); any other is a UserInputError."""
        pipe = self.get_pipeline()
        inputs = self.get_dummy_inputs()
        outputs = {}
        for kind in self.output_types:
            out = pipe(**{**self.get_dummy_inputs(), "output_type": kind})
            assert isinstance(out, self.output_class)
            outputs[kind] = out
        self.check_outputs(outputs, inputs)
        default = {k: v for k, v in self.get_dummy_inputs().items() if k != "output_type"}
        assert_outputs_close(pipe(**default), outputs[self.output_types[0]])
        for bad in self.bad_output_types:
            with pytest.raises(UserInputError, match="output_type"):
                pipe(**{**self.get_dummy_inputs(), "output_type": bad})

    def test_dict_tuple_outputs_equivalent(self) -> None:
        """``return_dict=False`` gives a plain tuple equal, field by field, to the dataclass."""
        pipe = self.get_pipeline()
        out = pipe(**self.get_dummy_inputs())
        tup = pipe(**self.get_dummy_inputs(), return_dict=False)
        assert isinstance(out, self.output_class) and type(tup) is tuple
        assert len(tup) == len(out.to_tuple())
        assert_outputs_close(tup, out.to_tuple())

    def test_progress_bar(self, capsys) -> None:
        """By default a progress bar runs to its total on stderr; ``disable=True`` prints
        nothing."""
        pipe = self.get_pipeline(progress=True)
        inputs = self.get_dummy_inputs()
        total = self.expected_progress_total(pipe, inputs)
        capsys.readouterr()
        pipe(**inputs)
        err = capsys.readouterr().err
        assert f"{total}/{total}" in err, err
        pipe.set_progress_bar_config(disable=True)
        pipe(**self.get_dummy_inputs())
        captured = capsys.readouterr()
        assert captured.err == "" and captured.out == ""


# --- EarthImagePipeline -----------------------------------------------------------------------


def layout_map(h: int = 64, w: int = 64, shift: int = 0) -> np.ndarray:
    """A small class map: a road, a building and water (``shift`` moves them)."""
    ids = np.zeros((h, w), dtype=np.uint8)
    ids[:, w // 3 + shift : w // 3 + shift + 6] = 4  # a road
    ids[8 + shift : 24 + shift, 8:20] = 1  # a building
    ids[40 - shift :, 40:] = 7  # water
    return ids


class TestEarthImagePipeline(PipelineTesterMixin):
    """Text + metadata + layout (fused control branch) conditioned latent diffusion."""

    pipeline_class = EarthImagePipeline
    output_class = EarthImageOutput
    output_types = ("pil", "np", "pt", "latent")
    bad_output_types = ("jpeg", "numpy")
    callback_kwargs_keys = frozenset({"latents"})
    steps = 2

    def get_dummy_components(self) -> dict:
        return get_dummy_components()

    def conditions(self, i: int = 0) -> dict:
        """The i-th sample's conditions besides the prompt."""
        return {"gsd": (0.5, 2.0)[i], "layout": layout_map(shift=4 * i)}

    def batch_conditions(self, n: int) -> dict:
        """The conditions of samples ``0 .. n - 1`` for one batched call."""
        return {
            "gsd": [0.5, 2.0][:n],
            "layout": np.stack([layout_map(shift=4 * i) for i in range(n)]),
        }

    def get_dummy_inputs(self, seed: int = 0) -> dict:
        return {
            "prompt": "dense city",
            **self.conditions(0),
            "num_inference_steps": self.steps,
            "guidance_scale": 4.0,
            "output_type": "np",
            "generator": torch.Generator().manual_seed(seed),
        }

    def get_batch_cases(self, seed: int = 0) -> list[tuple[dict, list[dict]]]:
        """Two prompts (each with its own conditions), and one prompt with
        ``num_images_per_prompt=2``; the noise given as ``latents`` so each sample's is known."""
        noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
        prompts = ["dense city", "a forest"]
        common = {"num_inference_steps": self.steps, "guidance_scale": 4.0, "output_type": "np"}
        two_prompts = (
            {**common, "prompt": prompts, **self.batch_conditions(2), "latents": noise},
            [
                {**common, "prompt": prompts[i], **self.conditions(i), "latents": noise[i : i + 1]}
                for i in range(2)
            ],
        )
        per_prompt = (
            {
                **common,
                "prompt": prompts[0],
                **self.conditions(0),
                "num_images_per_prompt": 2,
                "latents": noise,
            },
            [
                {**common, "prompt": prompts[0], **self.conditions(0), "latents": noise[i : i + 1]}
                for i in range(2)
            ],
        )
        return [two_prompts, per_prompt]

    def batch_item(self, output: Any, i: int) -> Any:
        return output.images[i : i + 1]

    def expected_progress_total(self, pipe: Any, inputs: dict) -> int:
        return inputs["num_inference_steps"]

    def expected_callback_calls(self, pipe: Any, inputs: dict) -> list[tuple[int, float, dict]]:
        sched = type(pipe.scheduler).from_config(pipe.scheduler.config)
        sched.set_timesteps(inputs["num_inference_steps"])
        return [(i, float(t), {}) for i, t in enumerate(sched.timesteps)]

    def check_outputs(self, outputs: dict[str, Any], inputs: dict) -> None:
        """pil: a list of RGB images; np: ``[B, H, W, 3]`` float in 0..1; pt: ``[B, 3, H, W]``
        tensor, the same values; latent: ``[B, 4, H/8, W/8]``; pil is np rounded to uint8."""
        pil, arr, pt, lat = (outputs[k].images for k in ("pil", "np", "pt", "latent"))
        assert isinstance(pil, list) and len(pil) == 1
        assert all(
            isinstance(im, Image.Image) and im.mode == "RGB" and im.size == (64, 64) for im in pil
        )
        assert (
            isinstance(arr, np.ndarray) and arr.shape == (1, 64, 64, 3) and arr.dtype == np.float32
        )
        assert arr.min() >= 0.0 and arr.max() <= 1.0 and arr.std() > 0
        assert isinstance(pt, torch.Tensor) and tuple(pt.shape) == (1, 3, 64, 64)
        assert isinstance(lat, torch.Tensor) and tuple(lat.shape) == (1, 4, 8, 8)
        np.testing.assert_array_equal(pt.permute(0, 2, 3, 1).numpy(), arr)
        np.testing.assert_array_equal(np.asarray(pil[0]), (arr[0] * 255).round().astype(np.uint8))

    def test_callback_replacement_is_the_final_state(self) -> None:
        """Latents returned at the last step are the latents the pipeline returns."""
        pipe = self.get_pipeline()
        target = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))

        def last(p: Any, step: int, t: Any, kwargs: dict) -> dict:
            return {"latents": target.clone()} if step == self.steps - 1 else {}

        out = pipe(
            **{**self.get_dummy_inputs(), "output_type": "latent"}, callback_on_step_end=last
        )
        torch.testing.assert_close(out.images, target, rtol=0, atol=0)


def box_components() -> dict:
    """Tiny box-conditioned components: the dummy components (metadata, no control branch) with
    a gated (GLIGEN) UNet and a box token encoder, the gates open so the boxes act."""
    from controls.boxes import GroundedUNet2DConditionModel
    from earthgen.conditioning.boxes import BoxTokenEncoder

    c = get_dummy_components(control=False, metadata=True)
    c["unet"] = GroundedUNet2DConditionModel.from_unet(c["unet"])
    torch.manual_seed(1)
    c["box_encoder"] = BoxTokenEncoder(text_dim=16, out_dim=16, hidden_dim=32)
    for m in c["unet"].modules():
        if hasattr(m, "alpha_attn"):
            m.alpha_attn.data.fill_(1.0)
            m.alpha_dense.data.fill_(1.0)
    return c


def box_set(shift: float = 0.0):
    """A horizontal car and a rotated storage tank (pixel corners), moved by ``shift``."""
    from earthgen.boxes import BoxSet, hbb_to_corners, obb_to_corners

    corners = np.concatenate(
        [
            hbb_to_corners(np.array([[4, 4, 30, 20]])),
            obb_to_corners(np.array([[40, 40, 20, 8, 0.7]])),
        ]
    )
    return BoxSet(corners + shift, ["car", "storage_tank"])


class TestEarthImagePipelineBoxes(TestEarthImagePipeline):
    """The image pipeline with object boxes (gated self-attention grounding tokens)."""

    def get_dummy_components(self) -> dict:
        return box_components()

    def conditions(self, i: int = 0) -> dict:
        return {"gsd": (0.5, 2.0)[i], "boxes": box_set(10.0 * i)}

    def batch_conditions(self, n: int) -> dict:
        return {"gsd": [0.5, 2.0][:n], "boxes": [box_set(10.0 * i) for i in range(n)]}

    def test_boxes_act(self) -> None:
        """The boxes reach the image (else the box cases above would test nothing)."""
        pipe = self.get_pipeline()
        base = pipe(**self.get_dummy_inputs())
        no_boxes = {k: v for k, v in self.get_dummy_inputs().items() if k != "boxes"}
        assert_outputs_differ(pipe(**no_boxes), base)


# --- EarthScenePipeline -----------------------------------------------------------------------


def scene_semantic(h: int = 32, w: int = 48, seed: int = 0) -> np.ndarray:
    """A north-up class map of 8 x 8 pixel blocks."""
    from earthgen.classes import NUM_CLASSES

    rng = np.random.default_rng(seed)
    return np.kron(rng.integers(0, NUM_CLASSES, (h // 8, w // 8)), np.ones((8, 8), int)).astype(
        np.uint8
    )


class TestEarthScenePipeline(PipelineTesterMixin):
    """Semantic map -> structure -> texture -> voxels and surfels; a 48 x 32 m map at 1 m/px
    with 32-voxel windows and 16 m overlap: two windows side by side."""

    pipeline_class = EarthScenePipeline
    output_class = EarthSceneOutput
    output_types = ("np",)
    bad_output_types = ("pil", "pt", "latent")
    callback_kwargs_keys = frozenset({"stage", "window", "latents"})

    def get_dummy_components(self) -> dict:
        from test_scene import get_scene_components

        return get_scene_components()

    def get_dummy_inputs(self, seed: int = 0) -> dict:
        return {
            "semantic": scene_semantic(),
            "gsd": 1.0,
            "overlap_m": 16.0,
            "num_inference_steps": 2,
            "output_type": "np",
            "generator": torch.Generator().manual_seed(seed),
        }

    def n_windows(self, pipe: Any, inputs: dict) -> int:
        """Windows of the inputs' extent (from the pipeline's own window plan)."""
        h, w = inputs["semantic"].shape
        vs = pipe.voxel_size
        nx, ny = round(w * inputs["gsd"] / vs), round(h * inputs["gsd"] / vs)
        ov = int(round(inputs["overlap_m"] / vs / 8)) * 8
        return len(window_starts(nx, pipe.window, ov)) * len(window_starts(ny, pipe.window, ov))

    @pytest.mark.skip(
        reason="EarthScenePipeline generates one scene per call (no prompt list, no "
        "num_images_per_prompt); same-seed calls agreeing is test_seeded_determinism"
    )
    def test_inference_batch_single_identical(self) -> None:
        """Not applicable: no batch."""

    def expected_progress_total(self, pipe: Any, inputs: dict) -> int:
        """Structure steps (the whole extent once) plus texture steps per window."""
        steps = inputs["num_inference_steps"]
        return steps + (inputs.get("texture_steps") or steps) * self.n_windows(pipe, inputs)

    def expected_callback_calls(self, pipe: Any, inputs: dict) -> list[tuple[int, float, dict]]:
        """The structure stage once for the whole extent (``window`` None), then the texture
        stage per window; ``t`` the flow time reached (Heun on the uniform grid)."""
        from flows.solver import make_time_grid

        steps = inputs["num_inference_steps"]
        tex = inputs.get("texture_steps") or steps
        calls = [
            (i, float(t), {"stage": "structure", "window": None})
            for i, t in enumerate(make_time_grid(steps)[1:])
        ]
        assert self.n_windows(pipe, inputs) == 2
        for wi in range(self.n_windows(pipe, inputs)):
            calls += [
                (i, float(t), {"stage": "texture", "window": wi})
                for i, t in enumerate(make_time_grid(tex)[1:])
            ]
        return calls

    def check_outputs(self, outputs: dict[str, Any], inputs: dict) -> None:
        """np: the arrays :class:`EarthSceneOutput` documents, every column of the 48 x 32 m
        extent filled (``fill_holes``)."""
        out = outputs["np"]
        n = len(out.coords)
        assert n > 0 and out.coords.shape == (n, 3) and out.coords.dtype == np.int32
        assert out.colors.shape == (n, 3) and out.colors.dtype == np.uint8
        m = len(out.surfels["voxel"])
        assert m >= n
        shapes = {
            "means": (m, 3),
            "quats": (m, 4),
            "scales": (m, 3),
            "opacities": (m,),
            "colors": (m, 3),
        }
        assert {k: out.surfels[k].shape for k in shapes} == shapes
        assert out.surfels["voxel"].min() == 0 and out.surfels["voxel"].max() == n - 1
        assert out.surfels["colors"].min() >= 0 and out.surfels["colors"].max() <= 1
        assert (
            out.height.shape == (32, 48)
            and out.height.dtype == np.float32
            and not np.isnan(out.height).any()
        )
        assert out.coords[:, 0].max() < 48 and out.coords[:, 1].max() < 32 and out.coords.min() >= 0
        assert out.voxel_size == 1.0 and out.origin.shape == (3,)
        assert out.windows == [(0, 0), (16, 0)]
