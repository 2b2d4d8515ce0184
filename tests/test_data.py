"""pyae.data: IDX parsing, the offline defaults, Cartoon Set folders, synthetic faces."""
import gzip
import re
import struct

import keras
import numpy as np
import pytest

from pyae import data

SEED = 20240611


# --------------------------------------------------------------------------- helpers

_IDX_CODES = {np.dtype("uint8"): 0x08, np.dtype("int8"): 0x09, np.dtype("int16"): 0x0B,
              np.dtype("int32"): 0x0C, np.dtype("float32"): 0x0D, np.dtype("float64"): 0x0E}


def write_idx(path, array, magic=None):
    """Write ``array`` as a gzip IDX file (the Fashion-MNIST format); ``magic`` overrides it."""
    array = np.asarray(array)
    magic = magic or bytes([0, 0, _IDX_CODES[array.dtype], array.ndim])
    header = magic + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(array.dtype.newbyteorder(">")).tobytes())
    return path


def write_fashion_folder(folder, rng, n_train=6, n_test=4):
    arrays = {
        "x_train": rng.integers(1, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
        "x_test": rng.integers(1, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for key, name in data.FASHION_MNIST_FILES.items():
        write_idx(folder / name, arrays[key])
    return arrays


def truncate(path, keep=0.5):
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])


# --------------------------------------------------------------------------- IDX / Fashion-MNIST

@pytest.mark.parametrize(
    "dtype, shape",
    [("uint8", (3, 28, 28)), ("uint8", (7,)), ("int16", (2, 5)), ("int32", (4, 3, 2)),
     ("float32", (6,)), ("float64", (2, 2))],
)
def test_read_idx_round_trips(tmp_path, rng, dtype, shape):
    array = (rng.uniform(1, 100, shape)).astype(dtype)
    path = write_idx(tmp_path / "a.idx.gz", array)
    np.testing.assert_array_equal(data.read_idx(path), array)


def test_load_fashion_mnist_from_folder(tmp_path, rng):
    arrays = write_fashion_folder(tmp_path, rng)
    (x_train, y_train), (x_test, y_test) = data.load_fashion_mnist(tmp_path)
    assert x_train.shape == (6, 28, 28, 1) and x_test.shape == (4, 28, 28, 1)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    np.testing.assert_allclose(x_train[..., 0], arrays["x_train"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y_test, arrays["y_test"])


def _bad_magic(folder, rng):
    write_idx(folder / "train-images-idx3-ubyte.gz",
              rng.integers(1, 256, (6, 28, 28), dtype=np.uint8), magic=b"\x00\x00\x07\x03")
    return "train-images-idx3-ubyte.gz"


def _truncated_data(folder, rng):
    path = folder / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    return "t10k-images-idx3-ubyte.gz"


def _not_gzip(folder, rng):
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(b"this is not gzip data at all")
    return "train-labels-idx1-ubyte.gz"


def _wrong_image_size(folder, rng):
    images = rng.integers(1, 256, (4, 27, 28), dtype=np.uint8)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images)
    return "t10k-images-idx3-ubyte.gz"


def _label_count_mismatch(folder, rng):
    write_idx(folder / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 5, dtype=np.uint8))
    return "train-labels-idx1-ubyte.gz"


def _missing_file(folder, rng):
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    return "t10k-labels-idx1-ubyte.gz"


@pytest.mark.parametrize(
    "corrupt", [_bad_magic, _truncated_data, _not_gzip, _wrong_image_size, _label_count_mismatch,
                _missing_file],
)
def test_corrupted_fashion_mnist_is_rejected_by_name(tmp_path, rng, corrupt):
    write_fashion_folder(tmp_path, rng)
    bad_name = corrupt(tmp_path, rng)
    with pytest.raises((ValueError, FileNotFoundError), match=re.escape(bad_name)):
        data.load_fashion_mnist(tmp_path)


def test_offline_error_says_what_to_do(monkeypatch):
    def no_network():
        raise Exception("URL fetch failure on https://storage.googleapis.com: None -- offline")

    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", no_network)
    with pytest.raises(data.DatasetUnavailableError) as info:
        data.load_fashion_mnist()
    message = str(info.value)
    assert "--fashion-mnist-path" in message and "digits" in message
    assert all(name in message for name in data.FASHION_MNIST_FILES.values())


def test_keras_path_is_normalised(monkeypatch, rng):
    def split(n):
        images = rng.integers(1, 256, (n, 28, 28), dtype=np.uint8)
        return images, rng.integers(0, 10, n, dtype=np.uint8)

    train, test = split(5), split(3)
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", lambda: (train, test))
    (x_train, y_train), (x_test, _) = data.load_fashion_mnist()
    assert x_train.shape == (5, 28, 28, 1) and x_test.shape == (3, 28, 28, 1)
    np.testing.assert_allclose(x_train[..., 0], train[0] / 255.0, rtol=1e-6)
    assert y_train.dtype == np.int64


# --------------------------------------------------------------------------- digits

@pytest.fixture(scope="module")
def digits():
    return data.load_digits_28()


@pytest.mark.parametrize("split, n", [(0, 1500), (1, 297)])
def test_digits_shapes_range_labels(digits, split, n):
    x, y = digits[split]
    assert x.shape == (n, 28, 28, 1) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.9
    assert set(np.unique(y)) == set(range(10))


def test_digits_split_is_stratified_and_deterministic(digits):
    (_, y_train), (x_test, y_test) = digits
    shares = np.bincount(y_test, minlength=10) / len(y_test)
    np.testing.assert_allclose(shares, np.bincount(y_train, minlength=10) / len(y_train), atol=0.01)
    np.testing.assert_array_equal(data.load_digits_28()[1][0], x_test)


# --------------------------------------------------------------------------- image folders

N_FACES, FACE_SIZE = 6, 32


def _flat_layout(root):
    return data.write_synthetic_cartoon_folder(root / "cartoonset10k", N_FACES, FACE_SIZE, SEED)


def _nested_layout(root):
    # cartoonset100k spreads its images over numbered subfolders.
    folder = root / "cartoonset100k"
    data.write_synthetic_cartoon_folder(folder / "0", N_FACES // 2, FACE_SIZE, SEED)
    data.write_synthetic_cartoon_folder(folder / "1", N_FACES // 2, FACE_SIZE, SEED + 1)
    return folder


@pytest.fixture
def cartoon_folder(tmp_path):
    return _flat_layout(tmp_path)


@pytest.mark.parametrize("layout", [_flat_layout, _nested_layout])
def test_image_folder_dataset_layouts(tmp_path, layout):
    folder = layout(tmp_path)
    ds = data.image_folder_dataset(folder, image_size=16, batch_size=4, seed=SEED)
    batches = [batch.numpy() for batch in ds]
    assert [b.shape for b in batches] == [(4, 16, 16, 3), (N_FACES - 4, 16, 16, 3)]
    images = np.concatenate(batches)
    assert images.dtype == np.float32 and images.min() >= 0.0 and images.max() <= 1.0


def test_csv_attributes_are_parsed(cartoon_folder):
    _, expected = data.synthetic_faces(N_FACES, FACE_SIZE, SEED)
    folder = data.scan_image_folder(cartoon_folder)
    order = [int(f.stem[2:]) for f in folder.files]  # file order is by name, not by index
    assert {name: values.tolist() for name, values in folder.attrs.items()} == {
        name: values[order].tolist() for name, values in expected.items()}
    assert folder.num_values == data.FACE_ATTRS
    assert folder.attrs_of("cs3.png")["hair_color"] == expected["hair_color"][3]


def test_nested_attrs_by_relative_path(tmp_path):
    folder = data.scan_image_folder(_nested_layout(tmp_path))
    _, second = data.synthetic_faces(N_FACES // 2, FACE_SIZE, SEED + 1)
    # Both subfolders hold a cs1.png, so only the path below the root is unambiguous.
    assert folder.attrs_of("1/cs1.png")["hair_color"] == second["hair_color"][1]
    assert folder.attrs_of(folder.root.resolve() / "1" / "cs1.png") == folder.attrs_of("1/cs1.png")
    with pytest.raises(KeyError, match="cs1.png"):
        folder.attrs_of("cs1.png")


def test_dataset_with_attrs_pairs_images_and_labels(cartoon_folder):
    folder = data.scan_image_folder(cartoon_folder)
    ds = data.image_folder_dataset(folder, 16, batch_size=N_FACES, shuffle=False, with_attrs=True)
    images, attrs = next(iter(ds))
    assert images.shape == (N_FACES, 16, 16, 3)
    np.testing.assert_array_equal(attrs["face_color"].numpy(), folder.attrs["face_color"])


@pytest.mark.parametrize("background", [(255, 0, 0), (0, 128, 255)])
def test_alpha_is_composited_over_background(cartoon_folder, background):
    images, _ = data.load_image_folder(cartoon_folder, FACE_SIZE, background=background)
    rgb, alpha, _ = data._render_faces(N_FACES, FACE_SIZE, SEED)
    corner = images[:, 0, 0]  # faces never reach the corners: alpha is 0 there
    expected_corner = np.broadcast_to(np.float32(background) / 255, corner.shape)
    np.testing.assert_allclose(corner, expected_corner, atol=1e-6)
    opaque = alpha == 1.0  # where alpha is 1 the stored colour shows, whatever the background
    order = [int(f.stem[2:]) for f in sorted(cartoon_folder.glob("*.png"))]
    np.testing.assert_allclose(images[opaque[order]], rgb[order][opaque[order]], atol=1 / 255)


def _truncated_png(folder):
    truncate(folder / "cs2.png")


def _garbage_png(folder):
    (folder / "cs2.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")


def _empty_png(folder):
    (folder / "cs2.png").write_bytes(b"")


@pytest.mark.parametrize("break_file", [_truncated_png, _garbage_png, _empty_png])
def test_broken_image_is_skipped_with_one_warning(cartoon_folder, break_file):
    break_file(cartoon_folder)
    with pytest.warns(UserWarning, match=r"skipping 1 unreadable image.*cs2\.png"):
        ds = data.image_folder_dataset(cartoon_folder, 16, batch_size=N_FACES, on_error="skip")
    assert sum(len(batch) for batch in ds) == N_FACES - 1


@pytest.mark.parametrize("break_file", [_truncated_png, _garbage_png, _empty_png])
def test_broken_image_is_raised_by_name(cartoon_folder, break_file):
    break_file(cartoon_folder)
    with pytest.raises(ValueError, match=r"cs2\.png"):
        data.image_folder_dataset(cartoon_folder, 16, on_error="raise")


def test_malformed_csv_counts_as_broken(cartoon_folder):
    (cartoon_folder / "cs4.csv").write_text('"hair_color", 3\n')
    with pytest.raises(ValueError, match=r"cs4"):
        data.scan_image_folder(cartoon_folder, on_error="raise")


@pytest.mark.parametrize(
    "call, error",
    [(lambda p: data.scan_image_folder(p / "missing"), FileNotFoundError),
     (lambda p: data.scan_image_folder(p), FileNotFoundError),
     (lambda p: data.scan_image_folder(p, on_error="ignore"), ValueError)],
)
def test_bad_folder_arguments(tmp_path, call, error):
    with pytest.raises(error):
        call(tmp_path)


def test_load_image_folder_limit(cartoon_folder):
    images, attrs = data.load_image_folder(cartoon_folder, image_size=(20, 24), limit=4)
    assert images.shape == (4, 20, 24, 3)
    assert all(len(values) == 4 for values in attrs.values())


# --------------------------------------------------------------------------- synthetic faces

@pytest.mark.parametrize("n, size", [(5, 16), (9, 48)])
def test_synthetic_faces_deterministic(n, size):
    images, attrs = data.synthetic_faces(n, size, seed=SEED)
    again, attrs_again = data.synthetic_faces(n, size, seed=SEED)
    other, _ = data.synthetic_faces(n, size, seed=SEED + 1)
    assert images.shape == (n, size, size, 3) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    np.testing.assert_array_equal(images, again)
    assert not np.array_equal(images, other)
    assert set(attrs) == set(data.FACE_ATTRS)
    assert all(np.array_equal(attrs[k], attrs_again[k]) for k in attrs)


def test_synthetic_attributes_cover_their_ranges():
    _, attrs = data.synthetic_faces(300, 8, seed=SEED)
    assert {name: len(np.unique(v)) for name, v in attrs.items()} == data.FACE_ATTRS


def test_synthetic_faces_do_not_depend_on_chunking():
    whole, _, _ = data._render_faces(7, 16, SEED, chunk=7)
    chunked, _, _ = data._render_faces(7, 16, SEED, chunk=3)
    np.testing.assert_array_equal(whole, chunked)


def test_written_csv_is_in_cartoon_set_format(cartoon_folder):
    lines = (cartoon_folder / "cs0.csv").read_text().splitlines()
    assert len(lines) == len(data.FACE_ATTRS)
    assert all(re.fullmatch(r'"\w+", \d+, \d+', line) for line in lines)


# --------------------------------------------------------------------------- dispatcher

def _fashion(tmp_path, rng):
    write_fashion_folder(tmp_path, rng)
    return data.load_dataset("fashion_mnist", fashion_mnist_path=tmp_path), (28, 28, 1), 10


def _digits(tmp_path, rng):
    return data.load_dataset(), (28, 28, 1), 10


def _faces(tmp_path, rng):
    return data.load_dataset("synthetic_faces", n=40, image_size=16), (16, 16, 3), 6


def _folder(tmp_path, rng):
    folder = data.write_synthetic_cartoon_folder(tmp_path / "cartoonset10k", 20, 16, SEED)
    return data.load_dataset(f"folder:{folder}", image_size=16), (16, 16, 3), 6


@pytest.mark.parametrize("load", [_fashion, _digits, _faces, _folder])
def test_load_dataset_uniform_structure(tmp_path, rng, load):
    dataset, image_shape, num_classes = load(tmp_path, rng)
    assert dataset.image_shape == image_shape and dataset.num_classes == num_classes
    assert len(dataset.x_train) == len(dataset.y_train)
    assert len(dataset.x_test) == len(dataset.y_test)
    assert dataset.y_train.max() < num_classes and dataset.x_train.dtype == np.float32


def test_load_dataset_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load_dataset("imagenet")


def test_a_folder_without_one_readable_image_says_so(cartoon_folder):
    for png in cartoon_folder.glob("*.png"):
        png.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"^no readable images in .*cartoonset10k: none of "
                                         rf"its {N_FACES} \.png"):
        data.load_dataset(f"folder:{cartoon_folder}", image_size=16)


def test_images_without_labels_among_labelled_ones_are_named_not_labelled_minus_one(
        cartoon_folder):
    (cartoon_folder / "cs3.csv").unlink()
    with pytest.warns(UserWarning, match=r"1 of 6 images .* no 'hair_color' .*cs3\.png.*"
                                         "without labels"):
        dataset = data.load_dataset(f"folder:{cartoon_folder}", image_size=16)
    assert dataset.y_train is None and dataset.y_test is None


# --------------------------------------------------------------------------- pipelines for fit


def epoch_of(dataset):
    return [batch.numpy() for batch in dataset]


def test_array_dataset_gives_every_image_once_per_epoch_in_a_new_order(rng):
    images = rng.random((10, 4, 4, 1), dtype=np.float32)
    dataset = data.array_dataset(images, batch_size=4, seed=SEED)
    first, second = epoch_of(dataset), epoch_of(dataset)
    assert [len(batch) for batch in first] == [4, 4, 2]  # the last batch partial, as Keras
    for epoch in (first, second):
        seen = np.concatenate(epoch)
        order = np.lexsort(seen.reshape(len(seen), -1).T)
        np.testing.assert_array_equal(seen[order],
                                      images[np.lexsort(images.reshape(10, -1).T)])
    assert not np.array_equal(np.concatenate(first), np.concatenate(second))


def test_array_dataset_in_order_without_shuffle_and_repeatable_with_a_seed(rng):
    images = rng.random((7, 3, 3, 2), dtype=np.float32)
    in_order = np.concatenate(epoch_of(data.array_dataset(images, 3, shuffle=False)))
    np.testing.assert_array_equal(in_order, images)
    runs = [np.concatenate(epoch_of(data.array_dataset(images, 3, seed=SEED)))
            for _ in range(2)]
    np.testing.assert_array_equal(*runs)


@pytest.mark.parametrize("images, batch_size, match", [
    (np.zeros((0, 4, 4, 1), np.float32), 2, r"non-empty.*shape \(0, 4, 4, 1\)"),
    (np.ones((3, 4, 4, 1), np.float32), 0, r"batch_size=0"),
])
def test_array_dataset_rejects_bad_input_by_name(images, batch_size, match):
    with pytest.raises(ValueError, match=match):
        data.array_dataset(images, batch_size)


def test_fit_pipelines_run_without_tf_data_autotuning(rng, cartoon_folder):
    # TF 2.21 can hold an epoch's end until the autotuner's next round: see without_autotune.
    images = rng.random((5, 4, 4, 1), dtype=np.float32)
    for dataset in (data.array_dataset(images, 2), data.image_folder_dataset(cartoon_folder,
                                                                             image_size=8)):
        assert dataset.options().autotune.enabled is False
