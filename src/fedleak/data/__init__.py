"""Image data for fedleak: built-in data sets, file formats, transforms and client partitions.

Everything is returned as an :class:`ImageDataset` (float32 images in [0, 1], int64 labels), and
every problem with a file or option is a :class:`fedleak.errors.DataError` naming the file.
"""

from fedleak.data.builtin import available_datasets
from fedleak.data.cifar10 import load_cifar10
from fedleak.data.dataset import DatasetInfo, ImageDataset
from fedleak.data.dicom import load_dicom_folder
from fedleak.data.folder import load_image_folder
from fedleak.data.load import load_dataset
from fedleak.data.medmnist import load_medmnist
from fedleak.data.partition import partition
from fedleak.data.transforms import resize, to_channels

__all__ = [
    "DatasetInfo",
    "ImageDataset",
    "available_datasets",
    "load_cifar10",
    "load_dataset",
    "load_dicom_folder",
    "load_image_folder",
    "load_medmnist",
    "partition",
    "resize",
    "to_channels",
]
