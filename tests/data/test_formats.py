import gzip
import io
import pickle
import tarfile

import numpy as np
import pytest
import torch
from conftest import make_images, write_image_folder
from PIL import Image

from distree.data import DataError, load_data
from distree.data.loading import detect_format, load_raw


# --- image folders -------------------------------------------------------------------
def test_image_folder_png_and_jpg(tmp_path):
    for ext in ("png", "jpg"):
        root = write_image_folder(tmp_path / ext, ext=ext)
        s = load_data(str(root), val_fraction=0.2)
        assert s.format == "image-folder"
        assert (len(s.train), len(s.val), len(s.test)) == (48, 12, 30)
        assert s.train.classes == ["class0", "class1", "class2"]
        assert s.train.image_shape == (3, 8, 8) and s.train.images.dtype == torch.uint8


def test_image_folder_png_is_lossless(tmp_path):
    root = write_image_folder(tmp_path / "d")
    _train, test, _ = load_raw(root)
    images, labels = make_images(30, seed=1)
    # Files are sorted by class, then name; rebuild that order from the generator.
    order = sorted(range(30), key=lambda i: (labels[i], f"{i:04d}"))
    assert torch.equal(test.images, torch.from_numpy(images[order]).permute(0, 3, 1, 2))
    assert test.labels.tolist() == [int(labels[i]) for i in order]


def test_missing_path_names_it(tmp_path):
    with pytest.raises(DataError, match="not found.*nope"):
        load_data(str(tmp_path / "nope"))


def test_no_data_names_all_three_sources():
    with pytest.raises(DataError) as err:
        load_data(None)
    assert "--data" in str(err.value) and "DISTREE_DATA" in str(err.value) and "download" in str(err.value)


def test_env_var_is_used(image_folder, monkeypatch):
    monkeypatch.setenv("DISTREE_DATA", str(image_folder))
    assert load_data(None).format == "image-folder"


def test_empty_class_folder(image_folder):
    (image_folder / "train" / "class9").mkdir()
    with pytest.raises(DataError, match="empty class folder.*class9"):
        load_data(str(image_folder))


def test_mixed_image_sizes(image_folder):
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(image_folder / "train" / "class1" / "odd.png")
    with pytest.raises(DataError, match="mixed image sizes.*odd.png"):
        load_data(str(image_folder))


def test_corrupt_file(image_folder):
    (image_folder / "test" / "class0" / "bad.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="corrupt.*bad.jpg"):
        load_data(str(image_folder))


def test_unrecognised_folder(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(DataError, match="cannot recognise"):
        load_data(str(tmp_path / "x"))


# --- CIFAR-10 python release ----------------------------------------------------------
def _cifar_batch(n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
    d[b"labels"] = [int(v) for v in d[b"labels"]]
    return pickle.dumps(d)


def _write_cifar(root):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for i in range(1, 6):
        (d / f"data_batch_{i}").write_bytes(_cifar_batch(4, i))
    (d / "test_batch").write_bytes(_cifar_batch(5, 0))
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    return d


def test_cifar_folder_and_targz(tmp_path):
    d = _write_cifar(tmp_path / "raw")
    tgz = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(d, arcname="cifar-10-batches-py")
    for path in (tmp_path / "raw", d, tgz):
        train, test, fmt = load_raw(path, use_cache=False)
        assert fmt == "cifar10-python"
        assert len(train) == 20 and len(test) == 5 and train.classes[3] == "c3"
        assert train.image_shape == (3, 32, 32)
    expected = np.frombuffer(pickle.loads(_cifar_batch(5, 0))[b"data"].tobytes(), np.uint8).reshape(5, 3, 32, 32)
    assert torch.equal(test.images, torch.from_numpy(expected.copy()))


def test_cifar_refuses_code_in_pickles(tmp_path):
    d = _write_cifar(tmp_path / "raw")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (d / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataError, match="corrupt CIFAR-10 batch test_batch.*refusing"):
        load_raw(d, use_cache=False)


def test_cifar_missing_batch(tmp_path):
    d = _write_cifar(tmp_path / "raw")
    (d / "data_batch_3").unlink()
    with pytest.raises(DataError):
        load_raw(d, fmt="cifar10-python", use_cache=False)


# --- IDX -------------------------------------------------------------------------------
def _idx(arr: np.ndarray) -> bytes:
    head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def _write_idx(root, gz: bool):
    root.mkdir(parents=True)
    for prefix, n in (("train", 12), ("t10k", 6)):
        images, labels = make_images(n, size=6, channels=1, classes=4)
        for kind, arr in (("images-idx3", images[..., 0]), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte"
            data = _idx(arr)
            (root / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    return root


@pytest.mark.parametrize("gz", [True, False])
def test_idx(tmp_path, gz):
    root = _write_idx(tmp_path / "idx", gz)
    train, test, fmt = load_raw(root, use_cache=False)
    assert fmt == "idx" and train.image_shape == (1, 6, 6) and len(train) == 12 and len(test) == 6
    images, labels = make_images(6, size=6, channels=1, classes=4)
    assert torch.equal(test.images[:, 0], torch.from_numpy(images[..., 0]))
    assert test.labels.tolist() == labels.tolist()


def test_idx_truncated(tmp_path):
    root = _write_idx(tmp_path / "idx", gz=False)
    f = root / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(DataError, match="corrupt IDX file.*t10k-images"):
        load_raw(root, use_cache=False)


# --- packed .npz -------------------------------------------------------------------------
def _write_npz(root, encoded: bool):
    root.mkdir(parents=True)
    for split, n in (("train", 10), ("test", 4)):
        images, labels = make_images(n)
        arrays = {"labels": labels.astype(np.uint8), "classes": np.array(["a", "b", "c"])}
        if encoded:
            blobs = []
            for im in images:
                buf = io.BytesIO()
                Image.fromarray(im).save(buf, format="PNG")
                blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
            arrays["jpeg"] = np.concatenate(blobs)
            arrays["offsets"] = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
        else:
            arrays["images"] = images
        np.savez(root / f"tiny-{split}.npz", **arrays)
    return root


@pytest.mark.parametrize("encoded", [True, False])
def test_npz(tmp_path, encoded):
    root = _write_npz(tmp_path / "npz", encoded)
    for path in (root, root / "tiny-train.npz"):
        train, test, fmt = load_raw(path, use_cache=False)
        assert fmt == "npz" and len(train) == 10 and train.classes == ["a", "b", "c"]
        images, _ = make_images(4)
        assert torch.equal(test.images, torch.from_numpy(images).permute(0, 3, 1, 2))


def test_npz_corrupt(tmp_path):
    root = _write_npz(tmp_path / "npz", True)
    (root / "tiny-test.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="corrupt .npz file.*tiny-test"):
        load_raw(root, use_cache=False)


def test_format_override(tmp_path):
    root = _write_idx(tmp_path / "idx", gz=True)
    assert detect_format(root) == "idx"
    with pytest.raises(DataError):
        load_raw(root, fmt="npz", use_cache=False)


# --- files that must give one-line errors ----------------------------------------------
def test_a_link_loop_in_an_image_folder_is_named(image_folder):
    loop = image_folder / "train" / "class0" / "loop.png"
    loop.symlink_to(loop)
    with pytest.raises(DataError, match="cannot read .*loop.png"):
        load_raw(image_folder, use_cache=False)


def test_a_decompression_bomb_is_refused(image_folder):
    import zlib

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    png = bytearray(buf.getvalue())
    ihdr = bytes(png[12:16]) + (20000).to_bytes(4, "big") * 2 + bytes(png[24:29])  # claims 20000 x 20000
    png[16:24] = ihdr[4:12]
    png[29:33] = zlib.crc32(ihdr).to_bytes(4, "big")
    (image_folder / "train" / "class0" / "bomb.png").write_bytes(bytes(png))
    with pytest.raises(DataError, match="bomb.png is too large to decode safely"):
        load_raw(image_folder, use_cache=False)


def test_an_empty_npz_file_is_named(tmp_path):
    root = _write_npz(tmp_path / "npz", False)
    (root / "tiny-train.npz").write_bytes(b"")
    with pytest.raises(DataError, match="corrupt .npz file.*tiny-train"):
        load_raw(root, use_cache=False)


def test_float_npz_images_are_refused_with_what_to_do(tmp_path):
    root = _write_npz(tmp_path / "npz", False)
    with np.load(root / "tiny-train.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["images"] = arrays["images"].astype(np.float32) / 255
    np.savez(root / "tiny-train.npz", **arrays)
    with pytest.raises(DataError, match=r"images are float32.*\(x \* 255\)"):
        load_raw(root, use_cache=False)


def test_a_corrupt_label_byte_is_refused(tmp_path):
    root = _write_idx(tmp_path / "idx", gz=False)
    f = root / "train-labels-idx1-ubyte"
    raw = bytearray(f.read_bytes())
    raw[-1] = 250  # one label of four classes becomes class 250
    f.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="labels run to 250 but 246 of 251 classes have no images"):
        load_raw(root, use_cache=False)


def test_a_damaged_cache_entry_is_rebuilt(image_folder):
    from distree.data.cache import cache_root

    first = load_raw(image_folder)[0]
    (entry,) = (cache_root() / "decoded").glob("*.safetensors")
    entry.write_bytes(b"not a safetensors file")
    again = load_raw(image_folder)[0]
    assert torch.equal(again.images, first.images)
    assert entry.read_bytes()[:8] != b"not a sa"  # written anew
