"""What each dataset's official "python version" archive holds: one `DatasetSpec` per dataset, in a registry."""

from __future__ import annotations

from dataclasses import dataclass

from cifarkit.errors import DatasetError


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    url: str
    md5: str
    archive_name: str
    folder: str  # the folder the archive extracts to
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: bytes  # key of the labels the model is trained on
    names_key: bytes  # key of the class names in the meta file
    num_classes: int
    train_size: int
    test_size: int
    default_val_per_class: int
    coarse_label_key: bytes | None = None
    superclasses_key: bytes | None = None
    num_coarse: int = 0

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file, self.meta_file)

    MAX_META_BYTES = 1 << 20  # the official meta files are a few KB

    def max_file_bytes(self, file: str) -> int:
        """The most a file of the extracted folder can be: its images (3,072 bytes each) and labels, with room
        for the pickle's framing (the official train file of CIFAR-100 is 155 MB; each CIFAR-10 batch 30 MB)."""
        if file == self.meta_file:
            return self.MAX_META_BYTES
        images = self.test_size if file == self.test_file else self.train_size // len(self.train_files)
        return images * 3072 * 11 // 10 + (4 << 20)


DATASETS: dict[str, DatasetSpec] = {
    "cifar100": DatasetSpec(
        name="cifar100",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        archive_name="cifar-100-python.tar.gz",
        folder="cifar-100-python",
        train_files=("train",),
        test_file="test",
        meta_file="meta",
        label_key=b"fine_labels",
        names_key=b"fine_label_names",
        num_classes=100,
        train_size=50_000,
        test_size=10_000,
        default_val_per_class=50,
        coarse_label_key=b"coarse_labels",
        superclasses_key=b"coarse_label_names",
        num_coarse=20,
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        archive_name="cifar-10-python.tar.gz",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_file="test_batch",
        meta_file="batches.meta",
        label_key=b"labels",
        names_key=b"label_names",
        num_classes=10,
        train_size=50_000,
        test_size=10_000,
        default_val_per_class=500,
    ),
}


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}") from None
