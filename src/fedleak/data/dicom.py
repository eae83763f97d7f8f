"""DICOM folders: ``*.dcm`` files (searched recursively), labelled by a CSV or by subfolder name.

Medical images carry calibration (RescaleSlope/Intercept) and display conventions (MONOCHROME1
means bright = low), which are applied before each image is scaled to [0, 1] on its own.
"""

from __future__ import annotations

import csv
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from fedleak.data._text import brief
from fedleak.data.dataset import ImageDataset
from fedleak.data.folder import FileIndex, read_files, sort_class_names
from fedleak.data.transforms import check_channels, check_size
from fedleak.errors import DataError


def _dicom_files(root: Path) -> list[Path]:
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() == ".dcm"
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise DataError(
            f"{root}: no .dcm files found (searched subfolders too); expected DICOM files."
        )
    return files


def _read_labels_csv(path: Path) -> dict[str, str]:
    """``file -> label`` from a CSV with header ``file,label`` (paths normalised to posix)."""
    if not path.is_file():
        raise DataError(f"{path}: labels CSV not found; expected a CSV with columns file,label.")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip().lower() for f in (reader.fieldnames or [])]
            if "file" not in fields or "label" not in fields:
                raise DataError(
                    f"{path}: needs a header with columns file,label; got {reader.fieldnames!r}."
                )
            reader.fieldnames = fields
            mapping: dict[str, str] = {}
            for row in reader:
                file, label = (row.get("file") or "").strip(), (row.get("label") or "").strip()
                if not file:
                    continue
                key = _norm(file)
                if not label:
                    raise DataError(f"{path}: line {reader.line_num}: empty label for {file!r}.")
                if mapping.get(key, label) != label:
                    raise DataError(
                        f"{path}: {file!r} has two labels ({mapping[key]!r} and {label!r})."
                    )
                mapping[key] = label
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read labels CSV ({brief(exc)}).") from exc
    if not mapping:
        raise DataError(f"{path}: labels CSV has no rows; expected columns file,label.")
    return mapping


def _norm(file: str) -> str:
    file = file.replace("\\", "/")
    while file.startswith("./"):
        file = file[2:]
    return file


def scan_dicom_folder(root: str | Path, labels_csv: str | Path | None = None) -> FileIndex:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found; expected a folder of .dcm files.")
    files = _dicom_files(root)
    names: list[str] = []
    if labels_csv is not None:
        csv_path = Path(labels_csv)
        mapping = _read_labels_csv(csv_path)
        basenames = Counter(p.name for p in files)
        for p in files:
            rel = p.relative_to(root).as_posix()
            if rel in mapping:
                names.append(mapping[rel])
            elif p.name in mapping:
                if basenames[p.name] > 1:
                    raise DataError(
                        f"{csv_path}: {p.name!r} matches {basenames[p.name]} files under {root}; "
                        "give the path relative to the folder instead."
                    )
                names.append(mapping[p.name])
            else:
                raise DataError(
                    f"{csv_path}: no label for {rel} (give its path relative to {root})."
                )
    else:
        for p in files:  # label = the subfolder of root holding the file (root/<class>/...)
            if p.parent == root:
                raise DataError(
                    f"{p}: no label; put DICOM files in {root}/<class>/ subfolders or pass a "
                    "labels CSV (dicom:DIR?labels=CSV or labels_csv=...)."
                )
            names.append(p.relative_to(root).parts[0])
    classes = sort_class_names(names)
    lookup = {c: i for i, c in enumerate(classes)}
    labels = np.array([lookup[n] for n in names], dtype=np.int64)
    return FileIndex(root, tuple(files), labels, classes)


def read_dicom_pixels(path: str | Path) -> np.ndarray:
    """One DICOM image as float32 ``(C, H, W)`` in [0, 1]; multi-frame files give the middle one."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise DataError(f"{path}: not a DICOM file ({brief(exc)}).") from exc
    except (OSError, EOFError, ValueError, TypeError, KeyError) as exc:
        raise DataError(f"{path}: truncated or corrupt DICOM file ({brief(exc)}).") from exc
    if "PixelData" not in ds:
        raise DataError(f"{path}: DICOM file holds no pixel data (PixelData); expected an image.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = np.asarray(ds.pixel_array)
    except Exception as exc:  # decoders raise many types; say which transfer syntax failed
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise DataError(
            f"{path}: cannot decode pixel data (truncated file or unsupported transfer syntax "
            f"{syntax}: {brief(exc)})."
        ) from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames > 1 and arr.ndim == (4 if samples > 1 else 3):
        arr = arr[arr.shape[0] // 2]
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3 and samples > 1 and arr.shape[2] in (3, 4):
        arr = arr[:, :, :3].transpose(2, 0, 1)
    else:
        raise DataError(f"{path}: unexpected pixel array shape {arr.shape}; expected a 2D image.")
    out = arr.astype(np.float64)
    slope, intercept = ds.get("RescaleSlope", 1), ds.get("RescaleIntercept", 0)
    try:
        out = out * float(slope if slope is not None else 1) + float(intercept or 0)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: bad RescaleSlope/RescaleIntercept ({brief(exc)}).") from exc
    if not np.isfinite(out).all():
        raise DataError(f"{path}: pixel data holds NaN or inf values.")
    lo, hi = float(out.min()), float(out.max())
    out = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        out = 1.0 - out
    return np.ascontiguousarray(out, dtype=np.float32)


def load_dicom_folder(
    root: str | Path,
    *,
    labels_csv: str | Path | None = None,
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
) -> ImageDataset:
    """Load every ``*.dcm`` under ``root``; labels from ``labels_csv`` (file,label) or subfolders.

    Without a CSV the label is the subfolder of ``root`` a file sits in, however deep
    (``root/<class>/<patient>/x.dcm``). CSV ``file`` entries are paths relative to ``root`` or bare
    file names. Images of different sizes need ``size``.
    """
    hw, ch = check_size(size), check_channels(channels)
    index = scan_dicom_folder(root, labels_csv)
    return read_files(
        index,
        reader=read_dicom_pixels,
        size=hw,
        channels=ch,
        name=index.root.resolve().name,
        description=f"DICOM folder {index.root}",
    )
