"""Optional download of the official CIFAR-10 and Fashion-MNIST releases, checked by md5."""

from __future__ import annotations

import hashlib
import sys
import urllib.request
from pathlib import Path

from distree.data.dataset import DataError

RELEASES: dict[str, dict[str, tuple[str, str]]] = {
    "cifar10": {
        "cifar-10-python.tar.gz": (
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
        ),
    },
    "fashion-mnist": {
        name: (f"http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/{name}", md5)
        for name, md5 in [
            ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        ]
    },
}


def md5sum(path: Path) -> str:
    """Hex md5 of a file."""
    h = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_release(name: str, cache_dir: Path) -> Path:
    """Fetch the official release ``name`` into ``cache_dir/name`` (once) and return the path
    a loader reads."""
    if name not in RELEASES:
        raise DataError(f"unknown data set {name!r}; downloadable: {', '.join(RELEASES)}")
    target = cache_dir / name
    target.mkdir(parents=True, exist_ok=True)
    for file, (url, md5) in RELEASES[name].items():
        dest = target / file
        if dest.is_file() and md5sum(dest) == md5:
            continue
        print(f"downloading {url}", file=sys.stderr)
        tmp = dest.with_suffix(dest.suffix + ".part")
        try:
            urllib.request.urlretrieve(url, tmp)
        except OSError as err:
            raise DataError(f"cannot download {url} ({err}); offline? pass --data PATH instead") from None
        if md5sum(tmp) != md5:
            tmp.unlink()
            raise DataError(f"download of {url} is corrupt (md5 mismatch)")
        tmp.rename(dest)
    files = list(RELEASES[name])
    return target / files[0] if len(files) == 1 else target
