"""The data layer: parsing, locating, downloading, verifying, extracting, splitting -- and every bad input."""

from __future__ import annotations

import functools
import http.server
import io
import os
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from cifarkit.data import DATASETS, get_spec, load_dataset, locate, read_folder, stratified_split
from cifarkit.data.safe_pickle import safe_loads
from cifarkit.errors import ConfigError, DatasetError
from tests.fakecifar import dumps, write_folder


def test_reads_fake_cifar100_with_superclasses(fake_root):
    data = load_dataset("cifar100", fake_root)
    assert data.train_images.shape == (600, 32, 32, 3) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (200, 32, 32, 3)
    assert np.bincount(data.train_labels).tolist() == [6] * 100
    assert len(data.classes) == 100 and len(data.superclasses) == 20
    assert data.fine_to_coarse.tolist() == [i % 20 for i in range(100)]


def test_pixels_are_decoded_channel_planar(tmp_path):
    # The official rows hold 1024 red, then 1024 green, then 1024 blue values, row-major.
    folder = write_folder(tmp_path, "cifar10", per_class_train=1, per_class_test=1)
    raw = pickle.loads((folder / "data_batch_1").read_bytes(), encoding="bytes")[b"data"]
    data = read_folder(folder, DATASETS["cifar10"])
    first = data.train_images[0]
    assert first[0, 1, 0] == raw[0, 1] and first[0, 0, 1] == raw[0, 1024] and first[31, 31, 2] == raw[0, 3071]


@pytest.mark.parametrize("given", ["root", "folder", "archive"])
def test_data_dir_accepts_root_folder_or_archive(fake_root, fake_archive, given):
    path = {"root": fake_root, "folder": fake_root / "cifar-100-python", "archive": None}[given]
    if path is None:
        path = fake_archive("cifar100")
    data = load_dataset("cifar100", path, download=False)
    assert data.train_images.shape[0] == 600


def test_environment_variable_is_used_before_the_cache(fake_root, monkeypatch):
    monkeypatch.setenv("CIFARKIT_DATA_DIR", str(fake_root))
    located = locate(get_spec("cifar10"), download_ok=False)
    assert located.folder == fake_root / "cifar-10-batches-py" and "CIFARKIT_DATA_DIR" in located.how


def test_flag_wins_over_environment_variable(fake_root, tmp_path, monkeypatch):
    monkeypatch.setenv("CIFARKIT_DATA_DIR", str(tmp_path / "does-not-exist"))
    assert locate(get_spec("cifar10"), fake_root, download_ok=False).how.startswith("--data-dir")


def test_cache_folder_is_used(fake_root, tmp_path):
    write_folder(tmp_path / "cache", "cifar10")
    located = locate(get_spec("cifar10"), download_ok=False, cache_dir=tmp_path / "cache")
    assert located.how.startswith("cache")


def test_offline_without_copy_says_where_to_put_files(tmp_path):
    with pytest.raises(DatasetError) as e:
        locate(get_spec("cifar100"), download_ok=False, cache_dir=tmp_path / "empty")
    message = str(e.value)
    assert "cifar-100-python.tar.gz" in message and "--data-dir" in message and "CIFARKIT_DATA_DIR" in message


def test_unreachable_download_is_a_clear_error(tmp_path, monkeypatch):
    import dataclasses

    from cifarkit.data import specs

    spec = dataclasses.replace(specs.DATASETS["cifar100"], url="http://127.0.0.1:9/cifar-100-python.tar.gz")
    with pytest.raises(DatasetError, match="(?s)could not download.*--data-dir"):
        locate(spec, cache_dir=tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())  # nothing half-written


class _Server:
    """A real HTTP server on localhost serving one folder."""

    def __init__(self, folder: Path):
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
        handler.log_message = lambda *a, **k: None
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _served_spec(name, base_url):
    import dataclasses

    from cifarkit.data import specs

    spec = specs.DATASETS[name]
    return dataclasses.replace(spec, url=f"{base_url}/{spec.archive_name}")


def test_download_verifies_and_extracts(fake_archive, tmp_path):
    archive = fake_archive("cifar10")
    cache = tmp_path / "cache"
    with _Server(archive.parent) as url:
        located = locate(_served_spec("cifar10", url), cache_dir=cache)
    assert located.folder == cache / "cifar-10-batches-py" and "downloaded" in located.how
    assert (cache / "cifar-10-python.tar.gz").read_bytes() == archive.read_bytes()
    assert read_folder(located.folder, get_spec("cifar10")).train_images.shape[0] == 60
    assert sorted(p.name for p in cache.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]


def test_download_with_wrong_md5_leaves_nothing(fake_archive, tmp_path, monkeypatch):
    import dataclasses

    from cifarkit.data import specs

    archive = fake_archive("cifar10")
    monkeypatch.setitem(specs.DATASETS, "cifar10", dataclasses.replace(specs.DATASETS["cifar10"], md5="0" * 32))
    cache = tmp_path / "cache"
    with _Server(archive.parent) as url, pytest.raises(DatasetError, match="md5 .* does not match"):
        locate(_served_spec("cifar10", url), cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_local_archive_with_wrong_md5_is_rejected(fake_archive, monkeypatch):
    import dataclasses

    from cifarkit.data import specs

    archive = fake_archive("cifar100")
    monkeypatch.setitem(specs.DATASETS, "cifar100", dataclasses.replace(specs.DATASETS["cifar100"], md5="f" * 32))
    with pytest.raises(DatasetError, match="does not match the official"):
        load_dataset("cifar100", archive)


def test_truncated_archive_is_reported(fake_archive, tmp_path, monkeypatch):
    import dataclasses
    import hashlib

    from cifarkit.data import specs

    archive = fake_archive("cifar100")
    cut = archive.read_bytes()[: archive.stat().st_size // 2]
    archive.write_bytes(cut)
    monkeypatch.setitem(specs.DATASETS, "cifar100",
                        dataclasses.replace(specs.DATASETS["cifar100"], md5=hashlib.md5(cut).hexdigest()))
    with pytest.raises(DatasetError, match="truncated or corrupt archive"):
        load_dataset("cifar100", archive)
    cache = Path(os.environ["CIFARKIT_CACHE_DIR"])
    assert not (cache / "cifar-100-python").exists() and not list(cache.glob(".extract-*"))


@pytest.mark.parametrize("member", [
    ("../escape.txt", tarfile.REGTYPE),
    ("/tmp/absolute.txt", tarfile.REGTYPE),
    ("cifar-100-python/link", tarfile.SYMTYPE),
    ("cifar-100-python/hard", tarfile.LNKTYPE),
    ("cifar-100-python/fifo", tarfile.FIFOTYPE),
])
def test_archive_members_escaping_or_linking_are_refused(fake_archive, tmp_path, member):
    name, kind = member
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = "/etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
    info.size = 5 if kind == tarfile.REGTYPE else 0
    archive = fake_archive("cifar100", extra=[info], extra_data=b"owned")
    with pytest.raises(DatasetError, match="refused"):
        load_dataset("cifar100", archive)
    assert not (tmp_path / "escape.txt").exists() and not Path("/tmp/absolute.txt").exists()


def test_archive_without_the_dataset_files(tmp_path, monkeypatch):
    import dataclasses
    import hashlib

    from cifarkit.data import specs

    archive = tmp_path / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-100-python/readme.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    monkeypatch.setitem(specs.DATASETS, "cifar100", dataclasses.replace(
        specs.DATASETS["cifar100"], md5=hashlib.md5(archive.read_bytes()).hexdigest()))
    with pytest.raises(DatasetError, match="lacks"):
        load_dataset("cifar100", archive)


def test_folder_missing_files(tmp_path):
    folder = write_folder(tmp_path, "cifar10")
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="missing data_batch_3"):
        load_dataset("cifar10", tmp_path)


@pytest.mark.parametrize("wanted,present", [("cifar100", "cifar10"), ("cifar10", "cifar100")])
def test_files_of_the_other_dataset(tmp_path, wanted, present):
    folder = write_folder(tmp_path, present)
    for path in (tmp_path, folder):
        with pytest.raises(DatasetError, match=f"holds {present} files.*--dataset {present}"):
            load_dataset(wanted, path)


def test_nonexistent_data_dir(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("cifar10", tmp_path / "nope")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("payload", [
    _Evil(),
    {b"data": _Evil()},
])
def test_pickle_that_would_run_code_is_refused(tmp_path, payload, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match="refusing to load posix.system|refusing to load os.system"):
        safe_loads(pickle.dumps(payload, protocol=2), "evil")
    assert not (tmp_path / "pwned").exists()


def test_crafted_batch_file_inside_folder_is_refused(tmp_path, monkeypatch):
    folder = write_folder(tmp_path, "cifar10")
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Evil()}, protocol=2))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match="test_batch: corrupt, truncated or not an official CIFAR file.*refusing"):
        load_dataset("cifar10", tmp_path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.update({b"data": np.zeros((3, 100), np.uint8)}), "shape"),
    (lambda d: d.update({b"data": np.zeros((len(d[b"labels"]), 3072), np.float32)}), "uint8"),
    (lambda d: d.update({b"labels": d[b"labels"][:-1]}), "should list"),
    (lambda d: d.update({b"labels": [99] * len(d[b"labels"])}), "outside 0..9"),
    (lambda d: d.pop(b"labels"), "no 'labels' entry"),
])
def test_invalid_batch_contents(tmp_path, mutate, message):
    folder = write_folder(tmp_path, "cifar10")
    batch = pickle.loads((folder / "data_batch_2").read_bytes(), encoding="bytes")
    mutate(batch)
    (folder / "data_batch_2").write_bytes(dumps(batch))
    with pytest.raises(DatasetError, match=message):
        load_dataset("cifar10", tmp_path)


def test_truncated_batch_file(tmp_path):
    folder = write_folder(tmp_path, "cifar10")
    raw = (folder / "data_batch_1").read_bytes()
    (folder / "data_batch_1").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(DatasetError, match="data_batch_1: corrupt, truncated"):
        load_dataset("cifar10", tmp_path)


def test_stratified_split_is_seeded_balanced_and_disjoint():
    labels = np.repeat(np.arange(10), 50)
    a = stratified_split(labels, 5, seed=3)
    b = stratified_split(labels, 5, seed=3)
    c = stratified_split(labels, 5, seed=4)
    assert np.array_equal(a.val, b.val) and not np.array_equal(a.val, c.val)
    assert np.bincount(labels[a.val]).tolist() == [5] * 10
    assert np.intersect1d(a.train, a.val).size == 0 and len(a.train) + len(a.val) == 500


def test_split_that_would_empty_a_class():
    with pytest.raises(ConfigError, match="cannot hold out"):
        stratified_split(np.repeat(np.arange(3), 4), 4)


# -- the real CIFAR-10 copy ---------------------------------------------------------------------------------

def test_real_cifar10_counts_and_mean(real_cifar10):
    data = load_dataset("cifar10", real_cifar10, download=False)
    assert data.train_images.shape == (50_000, 32, 32, 3) and data.test_images.shape == (10_000, 32, 32, 3)
    assert np.bincount(data.train_labels).tolist() == [5000] * 10
    assert np.bincount(data.test_labels).tolist() == [1000] * 10
    mean = data.train_images.reshape(-1, 3).mean(axis=0) / 255
    assert np.allclose(mean, [0.4913, 0.4821, 0.4465], atol=0.002)
    split = stratified_split(data.train_labels, get_spec("cifar10").default_val_per_class)
    assert np.bincount(data.train_labels[split.val]).tolist() == [500] * 10
