"""The Gradio app's handlers (apps/earthgen_app.py) with tiny random pipelines: bad input is a
gr.Error with a message, good input gives images of the asked size, seeds reproduce, 3D scenes
are written as loadable GLB files, session folders are cleaned up."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

gr = pytest.importorskip("gradio", reason='the app needs gradio: pip install "earthgen[app]"')

from apps.earthgen_app import (  # noqa: E402
    SCENE_SOURCES,
    AppLimits,
    augment_zip,
    cleanup_session,
    create_demo,
    drawn_layout,
    edit_image,
    extract_zip,
    generate_scene,
    layout_to_image,
    pick_seed,
    preview_layout,
    session_dir,
    text_to_image,
)
from earthgen.classes import CLASS_ID, PALETTE, colorize  # noqa: E402

LIMITS = AppLimits(max_side=128, max_steps=10, scene_render_size=64)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (two threads on a busy 2-core machine spin: 50x slower)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pipe():
    from earthgen.pipelines.image import EarthImagePipeline
    from tests.tiny_models import get_dummy_components

    p = EarthImagePipeline(**get_dummy_components())
    p.set_progress_bar_config(disable=True)
    return p


def t2i(pipe, **kw):
    args = {"prompt": "dense city", "negative_prompt": "", "gsd": 0.5, "width": 64, "height": 48, "steps": 2,
            "guidance": 3.0, "seed": 7, "randomize": False}
    args.update(kw)
    return text_to_image(pipe, LIMITS, **args)


def layout_png(tmp_path, h=48, w=64):
    from PIL import Image

    ids = np.zeros((h, w), np.uint8)
    ids[8:24, 8:30] = CLASS_ID["building"]
    ids[30:34, :] = CLASS_ID["road_major"]
    ids[36:, 40:] = CLASS_ID["water"]
    path = tmp_path / "layout.png"
    Image.fromarray(ids).save(path)
    return path, ids


def test_create_demo_wires_every_tab(pipe, tmp_path):
    demo = create_demo(pipe, None, None, limits=LIMITS, workdir=tmp_path)
    apis = {d.get("api_name") for d in demo.config["dependencies"]}
    assert {"text_to_image", "preview_layout", "layout_to_image", "edit", "scene"} <= apis
    assert "augment" not in apis  # no augmentation backend given: the tab only shows a note
    assert demo._queue.max_size == LIMITS.queue_size
    assert demo._queue.default_concurrency_limit == LIMITS.concurrency_limit
    empty = create_demo(None, None, None, workdir=tmp_path / "empty")
    assert {d.get("api_name") for d in empty.config["dependencies"]} & {"text_to_image", "edit"} == set()


def test_text_to_image_size_and_seed(pipe):
    img, seed = t2i(pipe)
    assert img.size == (64, 48) and seed == 7
    again, _ = t2i(pipe)
    other, _ = t2i(pipe, seed=8)
    a, b, c = (np.asarray(i, dtype=np.int16) for i in (img, again, other))
    assert np.array_equal(a, b)
    assert np.abs(a - c).mean() > 1.0
    # a random seed is shown back, and reusing it reproduces the image
    img_r, seed_r = t2i(pipe, randomize=True)
    assert 0 <= seed_r <= 2**31 - 1
    assert np.array_equal(np.asarray(img_r), np.asarray(t2i(pipe, seed=seed_r)[0]))
    # the location reaches the metadata encoder
    located, _ = t2i(pipe, location="43.73, 7.42")
    assert located.size == (64, 48) and not np.array_equal(np.asarray(located), np.asarray(img))
    # a separate metadata guidance: equal to the guidance it is the default image, else another
    same = np.asarray(t2i(pipe, metadata_guidance=3.0)[0], dtype=np.int16)
    assert np.abs(same - a).max() <= 1
    assert np.abs(np.asarray(t2i(pipe, metadata_guidance=10.0)[0], dtype=np.int16) - a).mean() > 0.5


@pytest.mark.parametrize("kw, match", [
    ({"width": 60}, "multiples of 8"),
    ({"width": 256}, "limited to 128"),
    ({"steps": 0}, "steps must be in 1..10"),
    ({"steps": 11}, "steps must be in 1..10"),
    ({"seed": -1}, "seed must be"),
    ({"seed": 1.5}, "seed must be"),
    ({"gsd": -2}, "GSD must be"),
    ({"location": "north"}, "location must be 'lat,lon'"),
    ({"location": "95,10"}, "location out of range"),
    ({"metadata_guidance": 40}, "metadata guidance must be in"),
    ({"metadata_guidance": 3, "gsd": 0}, "needs a GSD or a location"),
])
def test_text_to_image_bad_input(pipe, kw, match):
    with pytest.raises(gr.Error, match=match):
        t2i(pipe, **kw)


def test_pick_seed():
    assert pick_seed(12, False) == 12
    assert len({pick_seed(0, True) for _ in range(5)}) > 1


def test_layout_from_png(pipe, tmp_path):
    path, ids = layout_png(tmp_path)
    prev, img, seed, info = layout_to_image(pipe, LIMITS, str(path), None, "", "harbour", 1.0, 64, 48, 1.0, 1.0,
                                            2, 3.0, 3, False)
    assert np.array_equal(prev, colorize(ids))
    assert img.size == (64, 48) and seed == 3
    assert "building" in info and "64x48" in info
    # the layout drives the image: another layout, same seed, gives another image
    ids2 = np.full_like(ids, CLASS_ID["forest"])
    from PIL import Image

    Image.fromarray(ids2).save(tmp_path / "forest.png")
    _, img2, _, _ = layout_to_image(pipe, LIMITS, str(tmp_path / "forest.png"), None, "", "harbour", 1.0, 64, 48,
                                    1.0, 1.0, 2, 3.0, 3, False)
    assert not np.array_equal(np.asarray(img), np.asarray(img2))
    # a larger PNG is resized (nearest) to the asked size, keeping its classes
    layout_png(tmp_path, 96, 128)
    prev2, _ = preview_layout(LIMITS, str(tmp_path / "layout.png"), None, "", 1.0, 64, 48)
    assert prev2.shape == (48, 64, 3)


def test_layout_drawn_and_errors(pipe, tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[10:20, 10:40, :3] = PALETTE[CLASS_ID["building"]]
    rgba[10:20, 10:40, 3] = 255
    rgba[40:50, :, :3] = PALETTE[CLASS_ID["water"]] + 3  # anti-aliased brush colours snap to the palette
    rgba[40:50, :, 3] = 255
    ids = drawn_layout({"background": None, "layers": [rgba], "composite": rgba})
    assert ids[15, 20] == CLASS_ID["building"] and ids[45, 5] == CLASS_ID["water"] and ids[30, 30] == 0
    prev, img, _, _ = layout_to_image(pipe, LIMITS, None, {"layers": [rgba], "composite": rgba}, "", "", 0, 64, 64,
                                      1.0, 0.5, 2, 3.0, 0, False)
    assert np.array_equal(prev, colorize(ids)) and img.size == (64, 64)
    assert drawn_layout({"layers": [], "composite": np.zeros((64, 64, 4), np.uint8)}) is None
    with pytest.raises(gr.Error, match="upload a layout"):
        layout_to_image(pipe, LIMITS, None, None, "", "", 1.0, 64, 64, 1, 1, 2, 3.0, 0, False)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(gr.Error, match="bad.png"):
        preview_layout(LIMITS, str(bad), None, "", 1.0, 64, 64)
    with pytest.raises(gr.Error, match="centre must be"):
        preview_layout(LIMITS, str(tmp_path / "x.geojson"), None, "north", 1.0, 64, 64)


def test_layout_from_osm(pipe):
    from tests.conftest import fixture_path

    osm = fixture_path("osm/monaco-latest.osm.pbf")
    prev, info = preview_layout(LIMITS, str(osm), None, "43.7384, 7.4246", 2.0, 64, 64)
    assert prev.shape == (64, 64, 3)
    assert "2 m/px" in info and "building" in info
    with pytest.raises(gr.Error, match="outside"):
        preview_layout(LIMITS, str(osm), None, "48.85,2.35", 2.0, 64, 64)  # Paris is not in Monaco


def editor_value(h=70, w=60, paint=True):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    layer = np.zeros((h, w, 4), np.uint8)
    if paint:
        layer[5:20, 5:30] = (255, 0, 255, 255)
    return {"background": rgb, "layers": [layer], "composite": rgb}


def test_edit_inpaint_and_outpaint(pipe):
    img, seed = edit_image(pipe, LIMITS, editor_value(), "Inpaint (painted area)", 0, 0, 0, 0, "park", 0.5, 2, 3.0,
                           5, False)
    assert img.size == (56, 64) and seed == 5  # cropped to multiples of 8: 60x70 -> 56x64
    again, _ = edit_image(pipe, LIMITS, editor_value(), "Inpaint (painted area)", 0, 0, 0, 0, "park", 0.5, 2, 3.0,
                          5, False)
    assert np.array_equal(np.asarray(img), np.asarray(again))
    out, _ = edit_image(pipe, LIMITS, editor_value(), "Outpaint (extend borders)", 8, 16, 0, 4, "park", 0.5, 2, 3.0,
                        5, False)
    assert out.size == (56 + 8 + 16, 72)  # height 64 + 4 rounded up to a multiple of 8
    with pytest.raises(gr.Error, match="paint the area"):
        edit_image(pipe, LIMITS, editor_value(paint=False), "Inpaint", 0, 0, 0, 0, "", 0.5, 2, 3.0, 5, False)
    with pytest.raises(gr.Error, match="border > 0"):
        edit_image(pipe, LIMITS, editor_value(), "Outpaint", 0, 0, 0, 0, "", 0.5, 2, 3.0, 5, False)
    with pytest.raises(gr.Error, match="limit is 128"):
        edit_image(pipe, LIMITS, editor_value(), "Outpaint", 64, 64, 0, 0, "", 0.5, 2, 3.0, 5, False)
    with pytest.raises(gr.Error, match="upload an image"):
        edit_image(pipe, LIMITS, {"background": None, "layers": []}, "Inpaint", 0, 0, 0, 0, "", 0.5, 2, 3.0, 5, False)


def _load_glb(path):
    import trimesh

    mesh = trimesh.load(path, force="mesh")
    assert len(mesh.faces) > 0
    return mesh


def test_scene_procedural_without_model(tmp_path):
    glb, render, files, seed, info = generate_scene(None, LIMITS, tmp_path, SCENE_SOURCES[0], 3, 32, None, None,
                                                    2, 3.0, 4, False)
    mesh = _load_glb(glb)
    assert mesh.extents.max() > 10  # metres: a 32 m scene
    from PIL import Image

    assert Image.open(render).size == (2 * 64, 2 * 64)  # 2x2 views of 64 px
    assert {p.rsplit("/", 1)[-1] for p in files} >= {"scene.glb", "gaussians.ply", "voxels.ply"}
    assert seed == 4 and "voxels" in info
    with pytest.raises(gr.Error, match="no 3D model"):
        generate_scene(None, LIMITS, tmp_path, SCENE_SOURCES[2], 3, 32, None, np.zeros((8, 8, 3), np.uint8),
                       2, 3.0, 4, False)
    with pytest.raises(gr.Error, match="scene size"):
        generate_scene(None, LIMITS, tmp_path, SCENE_SOURCES[0], 3, 4096, None, None, 2, 3.0, 4, False)


@pytest.fixture(scope="module")
def scene_pipe():
    from tests.tiny_models import tiny_scene_pipeline

    return tiny_scene_pipeline()


def test_scene_with_model(scene_pipe, tmp_path):
    path, _ = layout_png(tmp_path)  # 64 x 48 px
    run = [scene_pipe, LIMITS, tmp_path, SCENE_SOURCES[1], 0, 32, str(path), None, 2, 2.0]
    glb, render, files, seed, info = generate_scene(*run, 11, False)
    mesh = _load_glb(glb)
    assert seed == 11 and "layout.png" in info
    assert 16 < mesh.extents[0] <= 33  # the map's width spans the 32 m asked (0.5 m/px)
    voxels = {p.rsplit("/", 1)[-1]: p for p in files}["voxels.ply"]
    again = {p.rsplit("/", 1)[-1]: p for p in generate_scene(*run, 11, False)[2]}["voxels.ply"]
    other = {p.rsplit("/", 1)[-1]: p for p in generate_scene(*run, 12, False)[2]}["voxels.ply"]
    assert open(voxels, "rb").read() == open(again, "rb").read()  # the seed reproduces the scene
    assert open(voxels, "rb").read() != open(other, "rb").read()
    aerial = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    _load_glb(generate_scene(scene_pipe, LIMITS, tmp_path, SCENE_SOURCES[2], 0, 32, None, aerial, 2, 2.0, 1,
                             False)[0])
    _load_glb(generate_scene(scene_pipe, LIMITS, tmp_path, SCENE_SOURCES[3], 0, 32, None, None, 2, 2.0, 1,
                             False)[0])
    with pytest.raises(gr.Error, match="steps"):
        generate_scene(scene_pipe, LIMITS, tmp_path, SCENE_SOURCES[1], 0, 32, str(path), None, 99, 2.0, 1, False)
    with pytest.raises(gr.Error, match="upload a semantic"):
        generate_scene(scene_pipe, LIMITS, tmp_path, SCENE_SOURCES[1], 0, 32, None, None, 2, 2.0, 1, False)


@pytest.fixture(scope="module")
def box_pipe():
    from tests.tiny_models import tiny_box_pipeline

    return tiny_box_pipeline()


def make_dataset_zip(folder):
    """A 3-image DOTA dataset of procedural world tiles (rotated boxes), zipped under one folder."""
    import shutil

    from earthgen.augment.world import world_items
    from earthgen.data import write_detection_dataset

    items = world_items(3, 0, 64, folder / "tiles", progress=False)
    write_detection_dataset(items, folder / "tiny_dota", "dota", images="copy")
    return shutil.make_archive(str(folder / "tiny_dota"), "zip", folder, "tiny_dota")


@pytest.fixture(scope="module")
def dataset_zip(tmp_path_factory):
    return make_dataset_zip(tmp_path_factory.mktemp("det"))


def test_augment_tab(box_pipe, dataset_zip, tmp_path):
    import zipfile

    from PIL import Image

    demo = create_demo(box_pipe, None, workdir=tmp_path / "demo")
    assert "augment" in {d.get("api_name") for d in demo.config["dependencies"]}
    previews, archive, seed, text = augment_zip(box_pipe, LIMITS, tmp_path, dataset_zip, 2, 2, 3.0, False, 5, False)
    assert seed == 5 and "3 real images (dota)" in text and "2 generated" in text
    names = zipfile.ZipFile(archive).namelist()
    assert sum(n.startswith("images/w0_") for n in names) == 3  # the real images are kept
    synthetic = sorted(n for n in names if n.startswith("images/synthetic_5_"))
    assert len(synthetic) == 2 and all(f"labelTxt/{n[7:-4]}.txt" in names for n in synthetic)
    assert "augment/manifest.json" in names
    assert len(previews) == 2
    drawn, caption = previews[0]
    raw = np.asarray(Image.open(zipfile.ZipFile(archive).open(f"images/{caption.split(':')[0]}")).convert("RGB"))
    assert drawn.shape == raw.shape and not np.array_equal(drawn, raw)  # the boxes are drawn on it
    with pytest.raises(gr.Error, match="1..32"):
        augment_zip(box_pipe, LIMITS, tmp_path, dataset_zip, 33, 2, 3.0, False, 5, False)
    with pytest.raises(gr.Error, match="no box conditioning"):
        augment_zip(SimpleNamespace(box_encoder=None), LIMITS, tmp_path, dataset_zip, 2, 2, 3.0, False, 5, False)


def test_extract_zip_is_safe(tmp_path):
    import zipfile

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("ok/a.txt", "x")
        z.writestr("../escape.txt", "x")
    with pytest.raises(gr.Error, match="unsafe path"):
        extract_zip(evil, tmp_path / "out", 10**6)
    assert not (tmp_path / "escape.txt").exists()
    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.bin", b"0" * 200_000)  # compresses to a few hundred bytes
    with pytest.raises(gr.Error, match="unpacks to"):
        extract_zip(big, tmp_path / "out2", 100_000)
    (tmp_path / "not.zip").write_text("hello")
    with pytest.raises(gr.Error, match="not a readable .zip"):
        extract_zip(tmp_path / "not.zip", tmp_path / "out3", 10**6)


def test_session_folders_are_separate_and_cleaned(tmp_path):
    a, b = SimpleNamespace(session_hash="abc"), SimpleNamespace(session_hash="def/../x")
    da, db = session_dir(tmp_path, a), session_dir(tmp_path, b)
    assert da != db and da.parent == tmp_path == db.parent  # no path tricks in the hash
    (da / "scene.glb").write_bytes(b"x")
    cleanup_session(tmp_path, a)
    assert not da.exists() and db.exists()


def test_cli_loads_models_and_reports_bad_ones(pipe, tmp_path, capsys):
    from earthgen.cli import main
    from earthgen.commands.app import load_models

    pipe.save_pretrained(tmp_path / "tiny")
    image, scene = load_models(str(tmp_path / "tiny"), "none", "cpu")
    assert scene is None and image.unet.config.sample_size == pipe.unet.config.sample_size
    assert load_models("none", "none", "cpu") == (None, None)
    assert main(["app", "--model", str(tmp_path / "missing"), "--scene-model", "none"]) == 2
    assert "model not found" in capsys.readouterr().err
    assert main(["app", "--model", "none", "--scene-model", "none", "--augment-model", str(tmp_path / "tiny")]) == 2
    assert "no box conditioning" in capsys.readouterr().err
