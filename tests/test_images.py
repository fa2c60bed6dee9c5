"""Images as they come: the conversion to a model's input, ``distree.load(...).infer``,
the client's ``infer`` and ``distree infer IMAGE...``, on the shipped Fashion-MNIST model
(28x28 grayscale)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import distree
from distree.cli.main import main
from distree.data import load_data
from distree.images import as_model_input, image_files
from distree.inference.inprocess import early_exit_batch
from distree.run import RunDir
from distree.runtime.client import DistreeClient

FMNIST = Path(__file__).parents[1] / "models" / "fashion-mnist"
FMNIST_DATA = Path(__file__).parents[2] / "shared" / "data" / "fashion-mnist"
GRAY, RGB = (1, 28, 28), (3, 32, 32)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_input_of_the_models_shape_passes_as_it_is():
    x = np.zeros((5, *GRAY), np.uint8)
    assert as_model_input(x, GRAY) is x


@pytest.mark.parametrize(
    "image",
    [
        np.full((64, 64, 3), 200, np.uint8),  # HWC, another size, colour
        np.full((3, 64, 48), 200, np.uint8),  # CHW
        np.full((64, 64), 200, np.uint8),  # HW
        np.full((64, 64, 1), 200, np.uint8),
        Image.new("RGB", (40, 30), (200, 200, 200)),
        _png(np.full((64, 64, 3), 200, np.uint8)),
    ],
    ids=["hwc", "chw", "hw", "hw1", "pil", "png-bytes"],
)
def test_any_image_becomes_one_input_of_the_models_shape(image):
    for shape in (GRAY, RGB):
        x = as_model_input(image, shape)
        assert x.shape == (1, *shape) and x.dtype == np.uint8
        assert np.all(x == 200)  # a flat grey stays that grey through resizing and channels


def test_files_folders_and_mixed_lists(tmp_path):
    (tmp_path / "frames" / "sub").mkdir(parents=True)
    for i, where in enumerate(["frames/a.png", "frames/sub/b.jpg", "c.png"]):
        Image.new("L", (10 + i, 12), 7 * i).save(tmp_path / where)
    (tmp_path / "frames" / "notes.txt").write_text("not an image")
    files = image_files([tmp_path / "frames", tmp_path / "c.png"])
    assert [f.name for f in files] == ["a.png", "b.jpg", "c.png"]
    x = as_model_input([*files, np.zeros((28, 28), np.uint8)], GRAY)
    assert x.shape == (4, *GRAY)


@pytest.mark.parametrize(
    ("image", "error", "message"),
    [
        (np.zeros((28, 28), np.float32), ValueError, "uint8"),
        (np.zeros((2, 2, 2, 2, 2), np.uint8), ValueError, r"\(H, W\)"),
        (b"not an image", ValueError, "not an image"),
        ("no/such/frame.png", FileNotFoundError, "no image file"),
        (3.5, TypeError, "float"),
        ([], ValueError, "no images"),
    ],
)
def test_what_is_not_an_image_is_named(image, error, message):
    with pytest.raises(error, match=message):
        as_model_input(image, GRAY)


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    # Pillow's own conversion to 8 bits clips: every pixel above 255 would become white.
    wide = (np.arange(28 * 28, dtype=np.uint32).reshape(28, 28) * 83 % 65536).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(wide).save(path)
    assert Image.open(path).mode.startswith("I")
    x = as_model_input(path, GRAY)
    expected = (wide.astype(np.int64) * 255 + 32767) // 65535
    assert np.array_equal(x[0, 0], expected.astype(np.uint8))
    # The data loader reads such files alike.
    from distree.data.formats.image_folder import decode_image

    assert np.array_equal(decode_image(path.read_bytes(), "deep.png")[:, :, 0], expected)
    with pytest.raises(ValueError, match="floating-point pixels"):
        as_model_input(Image.fromarray(np.zeros((4, 4), np.float32)), GRAY)


def test_folders_without_images_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image files"):
        image_files([tmp_path])


@pytest.fixture(scope="module")
def fmnist_test():
    return load_data(str(FMNIST_DATA)).test


def test_a_loaded_run_answers_as_the_stage_loop_does(fmnist_test):
    model = distree.load(FMNIST)
    images = fmnist_test.images[:200]
    got = model.infer(images.numpy())
    run = RunDir(FMNIST)
    want = early_exit_batch(run.load_student(), model.policy, model.thresholds, images, run.meta.data.normalization)
    assert [p.prediction for p in got] == want.predictions.tolist()
    assert [p.exit for p in got] == want.exit.tolist()
    assert np.mean([p.prediction == y for p, y in zip(got, fmnist_test.labels[:200].tolist())]) > 0.8
    (frame,) = model.infer(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    assert frame.class_name in model.classes and 0 < frame.probability <= 1


def test_images_through_a_cluster_by_the_client_and_the_command(fmnist_test, fmnist_cluster, tmp_path, capsys):
    shoe = fmnist_test.images[0, 0].numpy()  # one test image, 28x28, as a camera would not give it:
    big = np.asarray(Image.fromarray(shoe).resize((64, 64)).convert("RGB"))  # 64x64 RGB
    Image.fromarray(big).save(tmp_path / "frame.png")
    (tmp_path / "frames").mkdir()
    Image.fromarray(big).save(tmp_path / "frames" / "again.jpg")
    classes = distree.load(FMNIST).classes
    address = fmnist_cluster["max-prob"]
    with DistreeClient(address, timeout_s=30) as client:
        (answer,) = client.infer(big)
        assert answer.class_name == classes[answer.prediction]
        assert [a.class_name for a in client.infer([tmp_path / "frame.png", _png(big)])] == [answer.class_name] * 2
    assert main(["infer", "--server", address, str(tmp_path / "frame.png")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{tmp_path / 'frame.png'}\t{answer.class_name}\t")
    assert (
        main(["infer", "--server", address, str(tmp_path / "frame.png"), str(tmp_path / "frames"), "--json", "-"]) == 0
    )
    out = json.loads(capsys.readouterr().out)  # only the JSON on stdout
    assert [r["class"] for r in out["images"]] == [answer.class_name] * 2
    # The converted 64x64 frame is close enough to the original to get its class mostly;
    # what is asserted is that the whole path works, not the model's accuracy on it.
    assert answer.class_name in classes
