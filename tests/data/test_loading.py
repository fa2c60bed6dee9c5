import pytest
import torch

from distree.data import load_data, loading
from distree.data.augment import Normalization, random_crop_flip


def test_validation_split_is_deterministic_and_disjoint(image_folder):
    a = load_data(str(image_folder), val_fraction=0.25, split_seed=3)
    b = load_data(str(image_folder), val_fraction=0.25, split_seed=3)
    assert torch.equal(a.val.images, b.val.images) and len(a.val) == 15
    c = load_data(str(image_folder), val_fraction=0.25, split_seed=4)
    assert not torch.equal(a.val.images, c.val.images)
    rows = {tuple(x.flatten().tolist()) for x in a.train.images}
    assert not any(tuple(x.flatten().tolist()) in rows for x in a.val.images)


def test_second_load_comes_from_the_cache(image_folder, monkeypatch):
    first = load_data(str(image_folder))

    def fail(path):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setitem(loading.FORMATS, "image-folder", (loading.image_folder.detect, fail))
    second = load_data(str(image_folder))
    assert torch.equal(first.test.images, second.test.images)
    # A changed folder is a cache miss.
    (image_folder / "test" / "class0" / "0000.png").unlink()
    with pytest.raises(AssertionError, match="decoded again"):
        load_data(str(image_folder))


def test_crop_flip_keeps_shape_and_content():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    same, mirror = random_crop_flip(x, padding=0, flip=False)
    assert torch.equal(same, x) and not mirror.any()
    g = torch.Generator().manual_seed(0)
    out, _ = random_crop_flip(x, padding=2, flip=True, generator=g)
    assert out.shape == x.shape
    # Every output pixel is an input pixel of the same image and channel, or padding.
    for b in range(2):
        for c in range(3):
            assert set(out[b, c].flatten().tolist()) <= set(x[b, c].flatten().tolist()) | {0.0}
    flipped, mirror = random_crop_flip(x, padding=0, flip=True, generator=torch.Generator().manual_seed(1))
    for b in range(2):
        assert torch.equal(flipped[b], x[b].flip(2) if mirror[b] else x[b])


def test_normalization_roundtrip():
    imgs = torch.randint(0, 256, (50, 3, 4, 4), dtype=torch.uint8)
    norm = Normalization.fit(imgs)
    x = norm(imgs)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-2, rtol=0)
