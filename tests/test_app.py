"""The Gradio app's handlers (apps/earthgen_app.py) with tiny random pipelines: bad input is a
gr.Error with a message, good input gives images of the asked size, seeds reproduce, 3D scenes
are written as loadable GLB files, session folders are cleaned up."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import numpy as np
import pytest

gr = pytest.importorskip("gradio", reason='the app needs gradio: pip install "earthgen[app]"')

from apps.earthgen_app import (  # noqa: E402
    COMMIT_JS,
    LAYOUT_FILE_TYPES,
    SCENE_SOURCES,
    AppLimits,
    augment_zip,
    cleanup_session,
    create_demo,
    drawn_layout,
    edit_image,
    extract_zip,
    generate_scene,
    launch,
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
    """Tiny models run fastest on one thread (two threads on a busy 2-core machine spin: 50x
    slower)."""
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
    args = {
        "prompt": "dense city",
        "negative_prompt": "",
        "gsd": 0.5,
        "width": 64,
        "height": 48,
        "steps": 2,
        "guidance": 3.0,
        "seed": 7,
        "randomize": False,
    }
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
    assert {d.get("api_name") for d in empty.config["dependencies"]} & {
        "text_to_image",
        "edit",
    } == set()
    # the 3D viewer opens on an oblique view (45 degrees from the vertical), framing the scene
    viewer = [
        c for c in demo.config["components"] if c.get("props", {}).get("elem_id") == "scene-model"
    ]
    assert len(viewer) == 1 and list(viewer[0]["props"]["camera_position"])[1:] == [45.0, None]


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


@pytest.mark.parametrize(
    "kw, match",
    [
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
    ],
)
def test_text_to_image_bad_input(pipe, kw, match):
    with pytest.raises(gr.Error, match=match):
        t2i(pipe, **kw)


def test_pick_seed():
    assert pick_seed(12, False) == 12
    assert len({pick_seed(0, True) for _ in range(5)}) > 1


def test_layout_from_png(pipe, tmp_path):
    path, ids = layout_png(tmp_path)
    prev, img, seed, info = layout_to_image(
        pipe, LIMITS, str(path), None, "", "harbour", 1.0, 64, 48, 1.0, 1.0, 2, 3.0, 3, False
    )
    assert np.array_equal(prev, colorize(ids))
    assert img.size == (64, 48) and seed == 3
    assert "building" in info and "64x48" in info
    # the layout drives the image: another layout, same seed, gives another image
    ids2 = np.full_like(ids, CLASS_ID["forest"])
    from PIL import Image

    Image.fromarray(ids2).save(tmp_path / "forest.png")
    _, img2, _, _ = layout_to_image(
        pipe,
        LIMITS,
        str(tmp_path / "forest.png"),
        None,
        "",
        "harbour",
        1.0,
        64,
        48,
        1.0,
        1.0,
        2,
        3.0,
        3,
        False,
    )
    assert not np.array_equal(np.asarray(img), np.asarray(img2))
    # a larger PNG is resized (nearest) to the asked size, keeping its classes
    layout_png(tmp_path, 96, 128)
    prev2, _ = preview_layout(LIMITS, str(tmp_path / "layout.png"), None, "", 1.0, 64, 48)
    assert prev2.shape == (48, 64, 3)


def test_layout_drawn_and_errors(pipe, tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[10:20, 10:40, :3] = PALETTE[CLASS_ID["building"]]
    rgba[10:20, 10:40, 3] = 255
    rgba[40:50, :, :3] = (
        PALETTE[CLASS_ID["water"]] + 3
    )  # anti-aliased brush colours snap to the palette
    rgba[40:50, :, 3] = 255
    ids = drawn_layout({"background": None, "layers": [rgba], "composite": rgba})
    assert (
        ids[15, 20] == CLASS_ID["building"] and ids[45, 5] == CLASS_ID["water"] and ids[30, 30] == 0
    )
    prev, img, _, _ = layout_to_image(
        pipe,
        LIMITS,
        None,
        {"layers": [rgba], "composite": rgba},
        "",
        "",
        0,
        64,
        64,
        1.0,
        0.5,
        2,
        3.0,
        0,
        False,
    )
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
    img, seed = edit_image(
        pipe,
        LIMITS,
        editor_value(),
        "Inpaint (painted area)",
        0,
        0,
        0,
        0,
        "park",
        0.5,
        2,
        3.0,
        5,
        False,
    )
    assert img.size == (56, 64) and seed == 5  # cropped to multiples of 8: 60x70 -> 56x64
    again, _ = edit_image(
        pipe,
        LIMITS,
        editor_value(),
        "Inpaint (painted area)",
        0,
        0,
        0,
        0,
        "park",
        0.5,
        2,
        3.0,
        5,
        False,
    )
    assert np.array_equal(np.asarray(img), np.asarray(again))
    out, _ = edit_image(
        pipe,
        LIMITS,
        editor_value(),
        "Outpaint (extend borders)",
        8,
        16,
        0,
        4,
        "park",
        0.5,
        2,
        3.0,
        5,
        False,
    )
    assert out.size == (56 + 8 + 16, 72)  # height 64 + 4 rounded up to a multiple of 8
    with pytest.raises(gr.Error, match="paint the area"):
        edit_image(
            pipe,
            LIMITS,
            editor_value(paint=False),
            "Inpaint",
            0,
            0,
            0,
            0,
            "",
            0.5,
            2,
            3.0,
            5,
            False,
        )
    with pytest.raises(gr.Error, match="border > 0"):
        edit_image(pipe, LIMITS, editor_value(), "Outpaint", 0, 0, 0, 0, "", 0.5, 2, 3.0, 5, False)
    with pytest.raises(gr.Error, match="limit is 128"):
        edit_image(
            pipe, LIMITS, editor_value(), "Outpaint", 64, 64, 0, 0, "", 0.5, 2, 3.0, 5, False
        )
    with pytest.raises(gr.Error, match="upload an image"):
        edit_image(
            pipe,
            LIMITS,
            {"background": None, "layers": []},
            "Inpaint",
            0,
            0,
            0,
            0,
            "",
            0.5,
            2,
            3.0,
            5,
            False,
        )


def _load_glb(path):
    import trimesh

    mesh = trimesh.load(path, force="mesh")
    assert len(mesh.faces) > 0
    return mesh


def test_scene_procedural_without_model(tmp_path):
    glb, render, files, seed, info = generate_scene(
        None, LIMITS, tmp_path, SCENE_SOURCES[0], 3, 32, None, None, 2, 3.0, 4, False
    )
    mesh = _load_glb(glb)
    assert mesh.extents.max() > 10  # metres: a 32 m scene
    from PIL import Image

    assert Image.open(render).size == (2 * 64, 2 * 64)  # 2x2 views of 64 px
    assert {p.rsplit("/", 1)[-1] for p in files} >= {"scene.glb", "gaussians.ply", "voxels.ply"}
    assert seed == 4 and "voxels" in info
    with pytest.raises(gr.Error, match="no 3D model"):
        generate_scene(
            None,
            LIMITS,
            tmp_path,
            SCENE_SOURCES[2],
            3,
            32,
            None,
            np.zeros((8, 8, 3), np.uint8),
            2,
            3.0,
            4,
            False,
        )
    with pytest.raises(gr.Error, match="scene size"):
        generate_scene(
            None, LIMITS, tmp_path, SCENE_SOURCES[0], 3, 4096, None, None, 2, 3.0, 4, False
        )


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
    _load_glb(
        generate_scene(
            scene_pipe, LIMITS, tmp_path, SCENE_SOURCES[2], 0, 32, None, aerial, 2, 2.0, 1, False
        )[0]
    )
    _load_glb(
        generate_scene(
            scene_pipe, LIMITS, tmp_path, SCENE_SOURCES[3], 0, 32, None, None, 2, 2.0, 1, False
        )[0]
    )
    with pytest.raises(gr.Error, match="steps"):
        generate_scene(
            scene_pipe,
            LIMITS,
            tmp_path,
            SCENE_SOURCES[1],
            0,
            32,
            str(path),
            None,
            99,
            2.0,
            1,
            False,
        )
    with pytest.raises(gr.Error, match="upload a semantic"):
        generate_scene(
            scene_pipe, LIMITS, tmp_path, SCENE_SOURCES[1], 0, 32, None, None, 2, 2.0, 1, False
        )
    # an OSM file is rasterized around the data's centre over the scene's size (the CLI's loader)
    from tests.conftest import fixture_path

    bz2 = fixture_path("osm/West-Oakland.osm.bz2")
    glb, _, _, _, info = generate_scene(
        scene_pipe, LIMITS, tmp_path, SCENE_SOURCES[1], 0, 32, str(bz2), None, 2, 2.0, 1, False
    )
    assert "West-Oakland.osm.bz2, 32 m" in info and 16 < _load_glb(glb).extents[0] <= 33


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
    previews, archive, seed, text = augment_zip(
        box_pipe, LIMITS, tmp_path, dataset_zip, 2, 2, 3.0, False, 5, False
    )
    assert seed == 5 and "3 real images (dota)" in text and "2 generated" in text
    names = zipfile.ZipFile(archive).namelist()
    assert sum(n.startswith("images/w0_") for n in names) == 3  # the real images are kept
    synthetic = sorted(n for n in names if n.startswith("images/synthetic_5_"))
    assert len(synthetic) == 2 and all(f"labelTxt/{n[7:-4]}.txt" in names for n in synthetic)
    assert "augment/manifest.json" in names
    assert len(previews) == 2
    drawn, caption = previews[0]
    raw = np.asarray(
        Image.open(zipfile.ZipFile(archive).open(f"images/{caption.split(':')[0]}")).convert("RGB")
    )
    assert drawn.shape == raw.shape and not np.array_equal(drawn, raw)  # the boxes are drawn on it
    with pytest.raises(gr.Error, match="1..32"):
        augment_zip(box_pipe, LIMITS, tmp_path, dataset_zip, 33, 2, 3.0, False, 5, False)
    with pytest.raises(gr.Error, match="no box conditioning"):
        augment_zip(
            SimpleNamespace(box_encoder=None),
            LIMITS,
            tmp_path,
            dataset_zip,
            2,
            2,
            3.0,
            False,
            5,
            False,
        )


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
    assert (
        main(
            [
                "app",
                "--model",
                "none",
                "--scene-model",
                "none",
                "--augment-model",
                str(tmp_path / "tiny"),
            ]
        )
        == 2
    )
    assert "no box conditioning" in capsys.readouterr().err


# --- serving rules: upload limit, bounded queue, localhost (issue 24 §7) --------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(demo, **kw):
    """``demo`` served on a free local port; yields its base URL."""
    port = free_port()
    launch(demo, port=port, prevent_thread_lock=True, quiet=True, **kw)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def test_upload_over_the_limit_is_refused(pipe, tmp_path):
    import httpx

    limits = AppLimits(max_side=128, max_steps=10, max_upload_mb=0.01)  # 10 KiB
    with served(create_demo(None, None, None, limits=limits, workdir=tmp_path / "w")) as url:
        small = httpx.post(
            url + "gradio_api/upload", files={"files": ("a.png", b"x" * 5000)}, timeout=30
        )
        big = httpx.post(
            url + "gradio_api/upload", files={"files": ("b.png", b"x" * 20000)}, timeout=30
        )
    assert small.status_code == 200 and len(small.json()) == 1
    assert big.status_code == 413 and "maximum allowed size" in big.text
    # a file that reaches a handler another way is refused there, with the limit in the message
    from PIL import Image

    path = tmp_path / "noisy.png"  # random class ids: a PNG of about 30 KiB
    Image.fromarray(np.random.default_rng(0).integers(0, 8, (256, 256), dtype=np.uint8)).save(path)
    assert path.stat().st_size > 10 * 2**10
    with pytest.raises(gr.Error, match=r"layout file is 0\.\d MB; uploads are limited to 0\.01 MB"):
        preview_layout(limits, str(path), None, "", 1.0, 64, 64)
    with pytest.raises(gr.Error, match="uploads are limited"):
        generate_scene(
            None, limits, tmp_path, SCENE_SOURCES[1], 0, 32, str(path), None, 2, 2.0, 1, False
        )


class BlockingScene:
    """A scene 'pipeline' that waits for the test to release it, then fails with a user error."""

    window, voxel_size = 64, 1.0

    def __init__(self):
        import threading

        self.started, self.release, self.calls = threading.Event(), threading.Event(), 0

    def __call__(self, **kw):
        from earthgen.errors import UserInputError

        self.calls += 1
        self.started.set()
        self.release.wait(60)
        raise UserInputError("stopped by the test")


def test_full_queue_refuses_new_jobs(tmp_path):
    import httpx

    scene = BlockingScene()
    limits = AppLimits(max_side=128, max_steps=10, queue_size=1, concurrency_limit=1)
    demo = create_demo(None, scene, None, limits=limits, workdir=tmp_path)
    assert demo._queue.max_size == 1
    fn = next(d["id"] for d in demo.config["dependencies"] if d.get("api_name") == "scene")
    data = [SCENE_SOURCES[3], 0, 32, None, None, 2, 2.0, 0, False]

    def join(session: str):
        return httpx.post(
            url + "gradio_api/queue/join",
            timeout=30,
            json={
                "data": data,
                "fn_index": fn,
                "session_hash": session,
                "event_data": None,
                "trigger_id": None,
            },
        )

    try:
        with served(demo) as url:
            assert join("a").status_code == 200
            assert scene.started.wait(60)  # the first job runs (one at a time)...
            assert join("b").status_code == 200  # ...the second waits: the queue holds 1
            full = join("c")
            assert full.status_code == 503 and "Queue is full" in full.text
            assert scene.calls == 1
            scene.release.set()
    finally:
        scene.release.set()


def test_binds_to_localhost_unless_told(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")  # Gradio's variable does not widen it
    demo = create_demo(None, None, None, workdir=tmp_path / "w")
    with served(demo):
        assert demo.server_name == "127.0.0.1"
    # the CLI: 127.0.0.1 by default; another address only with --host, and then a warning
    import apps.earthgen_app as app_module
    from earthgen.cli import main

    hosts = []
    monkeypatch.setattr(
        app_module, "launch", lambda demo, host, port, share: hosts.append((host, port, share))
    )
    none = ["--model", "none", "--scene-model", "none", "--augment-model", "none"]
    assert main(["app", *none]) == 0
    assert hosts[-1] == ("127.0.0.1", 7860, False) and "warning" not in capsys.readouterr().out
    assert main(["app", *none, "--host", "0.0.0.0", "--port", "8080"]) == 0
    assert hosts[-1] == ("0.0.0.0", 8080, False)
    assert "warning: listening on 0.0.0.0" in capsys.readouterr().out


# --- the CLI's inputs, no silent clamps (issue 23 §4) ---------------------------------------------


def test_layout_uploads_take_every_cli_format(tmp_path):
    import gzip
    import shutil

    from earthgen.inputs import LAYOUT_SUFFIXES
    from tests.conftest import fixture_path

    assert set(LAYOUT_SUFFIXES) <= set(LAYOUT_FILE_TYPES)
    demo = create_demo(None, None, None, workdir=tmp_path / "w")
    # the 3D tab's layout upload (the image tabs need a model; checked in
    # test_create_demo_wires_every_tab)
    files = [
        c for c in demo.config["components"] if c["type"] == "file" and c["props"].get("file_types")
    ]
    assert all(set(LAYOUT_SUFFIXES) <= set(c["props"]["file_types"]) for c in files)
    bz2 = fixture_path("osm/West-Oakland.osm.bz2")
    prev, info = preview_layout(LIMITS, str(bz2), None, "", 2.0, 64, 64)
    assert (
        prev.shape == (64, 64, 3) and "West-Oakland.osm.bz2 rasterized" in info and "2 m/px" in info
    )
    osm = fixture_path("osm/winthrop.osm")
    gz = tmp_path / "winthrop.osm.gz"
    with open(osm, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    prev_gz, _ = preview_layout(LIMITS, str(gz), None, "", 2.0, 64, 64)
    prev_osm, _ = preview_layout(LIMITS, str(osm), None, "", 2.0, 64, 64)
    assert np.array_equal(prev_gz, prev_osm)  # the same data, compressed
    # a class map drawn in the palette colours reads as the same ids as the grey one
    from PIL import Image

    grey, ids = layout_png(tmp_path)
    Image.fromarray(colorize(ids)).save(tmp_path / "colours.png")
    assert np.array_equal(
        preview_layout(LIMITS, str(tmp_path / "colours.png"), None, "", 1.0, 64, 48)[0],
        colorize(ids),
    )
    # the loader's one-line errors, naming the upload by its name
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(gr.Error, match=r"layout notes.txt: unknown file type"):
        preview_layout(LIMITS, str(tmp_path / "notes.txt"), None, "", 1.0, 64, 64)


def test_sizes_over_the_limit_are_errors_not_clamps(pipe, tmp_path):
    demo = create_demo(pipe, None, None, limits=LIMITS, workdir=tmp_path)
    comps = {c["props"].get("elem_id"): c for c in demo.config["components"]}
    for key in ("t2i-width", "t2i-height", "l2i-width", "l2i-height", "scene-size"):
        assert (
            comps[key]["type"] == "number" and comps[key]["props"].get("maximum") is None
        )  # no slider clamp
    files = [
        c for c in demo.config["components"] if c["type"] == "file" and c["props"].get("file_types")
    ]
    assert any(".osm.bz2" in c["props"]["file_types"] for c in files)  # the layout tab's upload
    with pytest.raises(gr.Error, match="limited to 128 pixels a side here, asked 4096x48"):
        t2i(pipe, width=4096)
    with pytest.raises(gr.Error, match="limited to 128"):
        preview_layout(LIMITS, None, None, "", 1.0, 4096, 64)
    with pytest.raises(gr.Error, match="whole numbers"):
        preview_layout(LIMITS, None, None, "", 1.0, None, 64)
    with pytest.raises(gr.Error, match=r"the image is 200x140 px; images are limited to 128"):
        edit_image(
            pipe, LIMITS, editor_value(140, 200), "Inpaint", 0, 0, 0, 0, "", 0.5, 2, 3.0, 5, False
        )
    with pytest.raises(gr.Error, match=r"scene size must be in 16..256 metres, got 4096"):
        generate_scene(
            None, LIMITS, tmp_path, SCENE_SOURCES[0], 3, 4096, None, None, 2, 3.0, 4, False
        )


def test_typed_numbers_are_committed_as_typed(pipe, tmp_path):
    """Every number box and slider writes what is typed into its own state at once (a browser-only
    event), so the deferred initialization of a freshly shown tab cannot bring back the old
    value."""
    demo = create_demo(pipe, None, None, limits=LIMITS, workdir=tmp_path)
    numeric = {c["id"] for c in demo.config["components"] if c["type"] in ("number", "slider")}
    committed = {
        d["inputs"][0]
        for d in demo.config["dependencies"]
        if d.get("js") == COMMIT_JS
        and d["targets"] == [(d["inputs"][0], "input")]
        and d["outputs"] == d["inputs"]
        and not d["backend_fn"]
        and d["queue"] is False
    }
    assert numeric and numeric <= committed
