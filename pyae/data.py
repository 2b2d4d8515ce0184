"""Datasets: Fashion-MNIST, Cartoon Set image folders, and two offline defaults.

Every loader returns images as float32 in [0, 1], NHWC. Array loaders return
``((x_train, y_train), (x_test, y_test))`` like ``keras.datasets``; ``load_dataset`` wraps
any of them in one small :class:`Dataset` record so callers need not know which ran.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import gzip
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

__all__ = [
    "DIGIT_LABELS",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_LABELS",
    "Dataset",
    "DatasetUnavailableError",
    "ImageFolder",
    "array_dataset",
    "image_folder_dataset",
    "load_dataset",
    "load_digits_28",
    "load_fashion_mnist",
    "load_image_folder",
    "read_idx",
    "scan_image_folder",
    "synthetic_faces",
    "without_autotune",
    "write_synthetic_cartoon_folder",
]

FASHION_MNIST_URL = "https://github.com/zalandoresearch/fashion-mnist"
FASHION_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
FASHION_MNIST_LABELS = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
DIGIT_LABELS = tuple(str(d) for d in range(10))


class DatasetUnavailableError(RuntimeError):
    """A dataset could not be fetched or read; the message says what to do instead."""


# --------------------------------------------------------------------------- pipelines for fit


def without_autotune(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """``dataset`` with tf.data's autotuning off, so no epoch ends waiting for it.

    With autotuning on, an iterator runs a thread that re-plans the pipeline 10 ms, 30 ms,
    70 ms... (the gaps doubling up to 60 s) after the iterator starts. In TF 2.21 deleting
    the iterator often waits for that thread's next round: the destructor's wake-up is lost
    (the thread wakes before the cancellation is marked done and goes back to sleep), as a
    stack of the waiting process shows (``RootDataset::Iterator::~Iterator`` on the thread
    ``tf_data_model`` in ``Model::OptimizeLoop``). Keras' ``fit`` makes a new iterator every
    epoch, so an epoch whose steps took 5.1 s measured 10.2 s (bench/RESULTS.md). Without
    autotuning there is no such thread; a map's AUTOTUNE parallelism becomes the core count.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def array_dataset(images, batch_size: int = 128, shuffle: bool = True,
                  seed=None) -> tf.data.Dataset:
    """Batches of an array of ``images`` for ``fit``, as Keras' ``fit`` makes of an array.

    Every image once per epoch in ``batch_size`` batches (the last one partial), in a new
    order every epoch when ``shuffle`` (``seed`` or the global seed fixes the orders), with
    tf.data's autotuning off (see :func:`without_autotune`). ``Autoencoder.fit`` feeds arrays
    through it; pass it to any Keras model's ``fit`` for the same effect.
    """
    images = tf.convert_to_tensor(images)
    if images.shape.rank is None or images.shape.rank < 1 or images.shape[0] == 0:
        raise ValueError(f"array_dataset needs a non-empty array of images; received: "
                         f"images of shape {images.shape}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1; received: batch_size={batch_size!r}")
    count = int(images.shape[0])
    indices = tf.data.Dataset.range(count)
    if shuffle:
        # Indices, not images: a buffer of the whole array costs 8 bytes an image.
        indices = indices.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    batches = indices.batch(int(batch_size)).map(lambda batch: tf.gather(images, batch))
    return without_autotune(batches.prefetch(1))


# --------------------------------------------------------------------------- IDX / Fashion-MNIST

# IDX header: two zero bytes, a type code, the number of dimensions; then one big-endian
# uint32 per dimension; then the data, big-endian, row-major.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Parse one IDX file (gzip-compressed when the name ends in .gz) into an array.

    Raises ValueError naming the file when the magic number, header or size is wrong.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:  # gzip raises these on a truncated or non-gzip file
        raise ValueError(f"{path}: cannot read IDX file ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: bad IDX magic number {raw[:4].hex() or '(empty file)'}")
    ndim = raw[3]
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ValueError(f"{path}: IDX header truncated ({len(raw)} bytes, needs {header_len})")
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header_len != expected:
        raise ValueError(
            f"{path}: IDX data is {len(raw) - header_len} bytes, "
            f"header shape {shape} needs {expected}"
        )
    values = np.frombuffer(raw, dtype, offset=header_len).reshape(shape)
    return values.astype(dtype.newbyteorder("="))  # native byte order, and a writable copy


def _read_fashion_mnist_folder(folder: Path):
    arrays = {}
    for key, name in FASHION_MNIST_FILES.items():
        file = folder / name
        if not file.is_file():
            raise FileNotFoundError(f"{file}: missing; {_fashion_mnist_help()}")
        arrays[key] = read_idx(file)
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        images_file = folder / FASHION_MNIST_FILES[f"x_{split}"]
        labels_file = folder / FASHION_MNIST_FILES[f"y_{split}"]
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise ValueError(
                f"{images_file}: expected images of shape (n, 28, 28), got {images.shape}"
            )
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(
                f"{labels_file}: expected {len(images)} labels to match {images_file.name}, "
                f"got shape {labels.shape}"
            )
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def _fashion_mnist_help() -> str:
    names = ", ".join(FASHION_MNIST_FILES.values())
    return (
        f"download the four files {names} from the Fashion-MNIST repository "
        f"({FASHION_MNIST_URL}, folder data/fashion) into one folder and pass it as "
        "--fashion-mnist-path / load_fashion_mnist(path=...), or use the bundled offline "
        "default dataset 'digits' (load_digits_28())"
    )


def _to_unit_nhwc(images: np.ndarray, scale: float) -> np.ndarray:
    """uint8-like (n, h, w) or (n, h, w, c) -> float32 NHWC in [0, 1]."""
    images = np.asarray(images, np.float32) / scale
    return images[..., None] if images.ndim == 3 else images


def load_fashion_mnist(path=None):
    """Fashion-MNIST as ``((x_train, y_train), (x_test, y_test))``.

    Images are float32 (n, 28, 28, 1) in [0, 1]; labels int64.

    With ``path=None`` it goes through ``keras.datasets.fashion_mnist`` (downloads once, then
    uses the Keras cache). With ``path`` a folder holding the four IDX .gz files it reads
    them directly and never touches the network.
    """
    if path is not None:
        (x_train, y_train), (x_test, y_test) = _read_fashion_mnist_folder(Path(path))
    else:
        try:
            (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
        except Exception as err:  # keras wraps URLError/HTTPError in a bare Exception
            raise DatasetUnavailableError(
                f"Fashion-MNIST could not be downloaded ({err}). To work offline, "
                + _fashion_mnist_help()
            ) from err
    return (
        (_to_unit_nhwc(x_train, 255.0), np.asarray(y_train, np.int64)),
        (_to_unit_nhwc(x_test, 255.0), np.asarray(y_test, np.int64)),
    )


# --------------------------------------------------------------------------- digits (offline)

def load_digits_28(test_size: int = 297, seed: int = 0):
    """scikit-learn's 8x8 handwritten digits upsampled to 28x28x1: the bundled offline default.

    1797 images ship inside scikit-learn, so this needs no network. The split is stratified
    and fixed by ``seed`` (1500 train / 297 test by default). Same return structure as
    :func:`load_fashion_mnist`.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Pixel values are counts 0..16; bilinear upsampling keeps them inside that range.
    small = digits.images.astype(np.float32)[..., None] / 16.0
    images = tf.image.resize(small, (28, 28), method="bilinear").numpy()
    images = np.clip(images, 0.0, 1.0)
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_size, stratify=labels, random_state=seed
    )
    return (x_train, y_train), (x_test, y_test)


# --------------------------------------------------------------------------- image folders

@dataclasses.dataclass
class ImageFolder:
    """The readable images of a Cartoon-Set-style folder and their attributes.

    ``attrs[name][i]`` is the attribute value of ``files[i]`` (-1 where its csv lacks it);
    ``num_values[name]`` is how many values that attribute can take.
    """

    root: Path
    files: list
    attrs: dict
    num_values: dict
    skipped: list

    def attrs_of(self, file) -> dict:
        """Attributes of one image: by its path, its path below ``root``, or its bare name."""
        file = Path(file)
        if file.is_absolute() and file.is_relative_to(self.root.resolve()):
            file = file.relative_to(self.root.resolve())
        index = self._index.get(file.as_posix())
        if index is None:
            raise KeyError(f"{file}: not among the {len(self)} readable images of {self.root}")
        return {name: int(values[index]) for name, values in self.attrs.items()}

    @functools.cached_property
    def _index(self) -> dict:
        """Position of each file by its path below root and, where unambiguous, its name."""
        relative = [f.relative_to(self.root).as_posix() for f in self.files]
        names = [f.name for f in self.files]
        counts = collections.Counter(names)
        by_name = {name: i for i, name in enumerate(names) if counts[name] == 1}
        return {**by_name, **{path: i for i, path in enumerate(relative)}}

    def __len__(self):
        return len(self.files)


def _find_pngs(root: Path) -> list:
    # cartoonset10k is flat; cartoonset100k holds numbered subfolders of pngs.
    return sorted(root.glob("*.png")) + sorted(root.glob("*/*.png"))


def _parse_attr_csv(csv_path: Path) -> dict:
    """Cartoon Set csv: one line per attribute, ``"name", value, num_values``."""
    parsed = {}
    with open(csv_path, newline="") as f:
        for row in csv.reader(f, skipinitialspace=True):
            if not row:
                continue
            if len(row) != 3:
                raise ValueError(f"{csv_path}: expected '\"name\", value, num_values', got {row}")
            parsed[row[0].strip()] = (int(row[1]), int(row[2]))
    return parsed


def _check_image(png: Path):
    """``(None, attrs)`` when the PNG and its csv (if any) read cleanly, else ``(reason, None)``."""
    from PIL import Image

    try:
        with Image.open(png) as im:
            im.verify()  # walks every chunk and checks its CRC: catches truncated files cheaply
        csv_path = png.with_suffix(".csv")
        attrs = _parse_attr_csv(csv_path) if csv_path.is_file() else {}
        return None, attrs
    except Exception as err:  # PIL raises several unrelated types for a broken file
        return f"{type(err).__name__}: {err}", None


def scan_image_folder(path, on_error: str = "skip", limit=None) -> ImageFolder:
    """Find the PNGs under ``path``, check each one reads, and gather csv attributes.

    A broken image (truncated, not a PNG, bad csv) is found here, before any training:
    with ``on_error="skip"`` it is dropped and one warning lists all such names; with
    ``on_error="raise"`` a ValueError names the first one.
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder not found")
    pngs = _find_pngs(root)[:limit]
    if not pngs:
        raise FileNotFoundError(f"{root}: no .png images in it or in its subfolders")
    # File checks are I/O bound and PIL releases the GIL in zlib, so threads help.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(_check_image, pngs))
    bad = [(png, why) for png, (why, _) in zip(pngs, results, strict=True) if why is not None]
    if len(bad) == len(pngs):
        png, reason = bad[0]
        raise ValueError(f"no readable images in {root}: none of its {len(pngs)} .png file(s) "
                         f"reads (first: {png.name}: {reason})")
    if bad and on_error == "raise":
        png, reason = bad[0]
        raise ValueError(f"{png}: unreadable image ({reason}); {len(bad)} bad file(s) in {root}")
    if bad:
        warnings.warn(
            f"skipping {len(bad)} unreadable image(s) in {root}: "
            + ", ".join(f"{png.name} ({reason})" for png, reason in bad),
            stacklevel=2,
        )
    good = [(png, attrs) for png, (why, attrs) in zip(pngs, results, strict=True) if why is None]
    return _folder_from(root, good, [png for png, _ in bad])


def _folder_from(root: Path, good: list, skipped: list) -> ImageFolder:
    names = sorted({name for _, attrs in good for name in attrs})
    values = {name: np.full(len(good), -1, np.int64) for name in names}
    num_values = dict.fromkeys(names, 0)
    for i, (_, attrs) in enumerate(good):
        for name, (value, count) in attrs.items():
            values[name][i] = value
            num_values[name] = max(num_values[name], count)
    return ImageFolder(root, [png for png, _ in good], values, num_values, skipped)


def _size_pair(image_size):
    return (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)


def _decode_fn(image_size, background):
    size = _size_pair(image_size)
    background = tf.constant(np.asarray(background, np.float32) / 255.0)

    def decode(path):
        rgba = tf.io.decode_png(tf.io.read_file(path), channels=4)
        rgba = tf.cast(rgba, tf.float32) / 255.0
        alpha = rgba[..., 3:]
        # Cartoon Set draws on a transparent canvas: composite over a fixed colour so the
        # network never sees the undefined RGB under alpha = 0.
        rgb = rgba[..., :3] * alpha + background * (1.0 - alpha)
        rgb = tf.image.resize(rgb, size, method="bilinear", antialias=True)
        return tf.clip_by_value(rgb, 0.0, 1.0)

    return decode


def image_folder_dataset(
    path,
    image_size=256,
    batch_size: int = 32,
    on_error: str = "skip",
    background=(255, 255, 255),
    shuffle: bool = True,
    seed=None,
    with_attrs: bool = False,
    limit=None,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """A batched, prefetched ``tf.data.Dataset`` of images from a Cartoon-Set-style folder.

    ``path`` is a folder (``cartoonset10k/*.png`` or ``cartoonset100k/<sub>/*.png``) or an
    :class:`ImageFolder` from :func:`scan_image_folder` (which also gives the attributes by
    file, ``folder.attrs_of(name)``). Elements are float32 images in [0, 1] of
    ``image_size``, RGBA composited over ``background``; with ``with_attrs=True`` they are
    ``(images, {attr_name: int64 values})``. Broken files are handled before the first
    epoch (see :func:`scan_image_folder`). tf.data's autotuning is off
    (:func:`without_autotune`: with it on, an epoch's end can wait up to a minute).
    """
    folder = path if isinstance(path, ImageFolder) else scan_image_folder(path, on_error, limit)
    paths = tf.constant([str(f) for f in folder.files])
    ds = tf.data.Dataset.from_tensor_slices((paths, folder.attrs) if with_attrs else paths)
    if shuffle:
        # Shuffle file names, not decoded images: a full-size buffer then costs only strings.
        ds = ds.shuffle(len(folder.files), seed=seed, reshuffle_each_iteration=True)
    decode = _decode_fn(image_size, background)
    if with_attrs:
        ds = ds.map(lambda p, a: (decode(p), a), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    if on_error == "skip":
        # Last line of defence: a file that changed after the scan is dropped, not fatal.
        ds = ds.ignore_errors()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
    return without_autotune(ds)


def load_image_folder(
    path, image_size=256, on_error: str = "skip", background=(255, 255, 255), limit=None
):
    """A small folder as ``(images, attrs)``: float32 (n, h, w, 3) in [0, 1], file order."""
    folder = path if isinstance(path, ImageFolder) else scan_image_folder(path, on_error, limit)
    ds = image_folder_dataset(
        folder, image_size, batch_size=64, on_error=on_error, background=background, shuffle=False
    )
    images = np.concatenate([batch.numpy() for batch in ds], axis=0)
    return images, dict(folder.attrs)


# --------------------------------------------------------------------------- synthetic faces

BACKGROUND_COLORS = np.array(
    [[0.60, 0.80, 0.95], [0.95, 0.85, 0.60], [0.70, 0.90, 0.70], [0.90, 0.70, 0.80],
     [0.80, 0.80, 0.80], [0.75, 0.70, 0.95]], np.float32)
FACE_COLORS = np.array(
    [[1.00, 0.87, 0.77], [0.94, 0.76, 0.60], [0.78, 0.57, 0.40], [0.55, 0.37, 0.24]], np.float32)
HAIR_COLORS = np.array(
    [[0.10, 0.08, 0.06], [0.45, 0.27, 0.12], [0.93, 0.80, 0.45], [0.75, 0.25, 0.10],
     [0.70, 0.70, 0.72], [0.20, 0.35, 0.80]], np.float32)
HAIR_COLOR_NAMES = ("black", "brown", "blond", "red", "grey", "blue")
EYE_COLORS = np.array([[0.15, 0.10, 0.05], [0.20, 0.40, 0.80], [0.20, 0.55, 0.25]], np.float32)
HAIR_STYLES = ("bald", "short", "long")
MOUTH_STYLES = ("smile", "flat", "open")

FACE_ATTRS = {
    "background_color": len(BACKGROUND_COLORS),
    "face_color": len(FACE_COLORS),
    "hair_color": len(HAIR_COLORS),
    "hair_style": len(HAIR_STYLES),
    "eye_color": len(EYE_COLORS),
    "mouth": len(MOUTH_STYLES),
}


def _ellipse(yy, xx, cy, cx, ry, rx):
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _face_params(n: int, rng: np.random.Generator) -> dict:
    """Discrete attributes (the labels) and continuous jitter, one row per face."""
    def col(values):  # parameters as (n, 1, 1) so they broadcast over the pixel grid
        return np.asarray(values, np.float32)[:, None, None]

    return {
        "background_color": rng.integers(len(BACKGROUND_COLORS), size=n),
        "face_color": rng.integers(len(FACE_COLORS), size=n),
        "hair_color": rng.integers(len(HAIR_COLORS), size=n),
        "hair_style": rng.integers(len(HAIR_STYLES), size=n),
        "eye_color": rng.integers(len(EYE_COLORS), size=n),
        "mouth": rng.integers(len(MOUTH_STYLES), size=n),
        "cy": col(rng.uniform(0.02, 0.10, n)), "cx": col(rng.uniform(-0.06, 0.06, n)),
        "ry": col(rng.uniform(0.50, 0.62, n)), "rx": col(rng.uniform(0.38, 0.50, n)),
        "eye_gap": col(rng.uniform(0.14, 0.22, n)), "eye_r": col(rng.uniform(0.05, 0.08, n)),
        "mouth_w": col(rng.uniform(0.12, 0.22, n)),
    }


def _face_layers(p: dict, yy, xx) -> list:
    """(mask, colour) pairs painted in order; masks are (n, s, s) booleans."""
    cy, cx, ry, rx = p["cy"], p["cx"], p["ry"], p["rx"]
    style = p["hair_style"][:, None, None]
    hair = HAIR_COLORS[p["hair_color"]][:, None, None]
    face = _ellipse(yy, xx, cy, cx, ry, rx)
    long_hair = (style == 2) & _ellipse(yy, xx, cy + 0.1, cx, ry + 0.12, rx + 0.12)
    long_hair &= yy > cy - ry - 0.12
    cap = _ellipse(yy, xx, cy - 0.05, cx, ry + 0.06, rx + 0.06) & (yy < cy - 0.45 * ry)
    eye_y = cy - 0.15 * ry
    eyes = _ellipse(yy, xx, eye_y, cx - p["eye_gap"], p["eye_r"], p["eye_r"]) | _ellipse(
        yy, xx, eye_y, cx + p["eye_gap"], p["eye_r"], p["eye_r"])
    mouth_y, mouth = cy + 0.5 * ry, p["mouth"][:, None, None]
    smile = _ellipse(yy, xx, mouth_y - 0.05, cx, 0.12, p["mouth_w"]) & ~_ellipse(
        yy, xx, mouth_y - 0.09, cx, 0.12, p["mouth_w"])
    flat = (np.abs(yy - mouth_y) < 0.025) & (np.abs(xx - cx) < p["mouth_w"])
    open_mouth = _ellipse(yy, xx, mouth_y, cx, 0.07, 0.6 * p["mouth_w"])
    mouth_mask = np.where(mouth == 0, smile, np.where(mouth == 1, flat, open_mouth))
    return [
        (long_hair, hair),
        (face, FACE_COLORS[p["face_color"]][:, None, None]),
        ((style >= 1) & cap, hair),
        (face & eyes, EYE_COLORS[p["eye_color"]][:, None, None]),
        (face & mouth_mask, np.float32([0.55, 0.10, 0.12])),
    ]


def _draw(params: dict, image_size: int):
    """Paint the faces of ``params`` (already sliced to one chunk): RGB and foreground alpha."""
    n = len(params["face_color"])
    scale = 2  # draw at twice the size and average 2x2 blocks: cheap anti-aliasing
    side = image_size * scale
    grid = (np.arange(side, dtype=np.float32) + 0.5) / side * 2.0 - 1.0
    yy, xx = grid[None, :, None], grid[None, None, :]
    rgb = np.broadcast_to(BACKGROUND_COLORS[params["background_color"]][:, None, None],
                          (n, side, side, 3)).copy()
    alpha = np.zeros((n, side, side), np.float32)
    for mask, colour in _face_layers(params, yy, xx):
        rgb = np.where(mask[..., None], colour, rgb)
        alpha = np.maximum(alpha, mask)
    rgb = rgb.reshape(n, image_size, scale, image_size, scale, 3).mean(axis=(2, 4))
    alpha = alpha.reshape(n, image_size, scale, image_size, scale).mean(axis=(2, 4))
    return rgb.astype(np.float32), alpha.astype(np.float32)


def _render_faces(n: int, image_size: int, seed: int, chunk: int = 128):
    """RGB over a coloured background, the foreground alpha, and the attribute labels."""
    if n < 1 or image_size < 4:
        raise ValueError(f"need n >= 1 faces of image_size >= 4, got {n=}, {image_size=}")
    # All random draws happen up front, so the result does not depend on the chunking.
    params = _face_params(n, np.random.default_rng(seed))
    # Draw in chunks: the 2x canvas of a few thousand faces would not fit in memory at once.
    drawn = [
        _draw({k: v[start:start + chunk] for k, v in params.items()}, image_size)
        for start in range(0, n, chunk)
    ]
    rgb = np.concatenate([d[0] for d in drawn])
    alpha = np.concatenate([d[1] for d in drawn])
    attrs = {name: params[name].astype(np.int64) for name in FACE_ATTRS}
    return rgb, alpha, attrs


def synthetic_faces(n: int, image_size: int = 64, seed: int = 0):
    """``n`` cartoon-like RGB faces, float32 (n, s, s, 3) in [0, 1], and their attributes.

    Pure numpy and deterministic in ``seed``. ``attrs`` maps each name of ``FACE_ATTRS``
    (background_color, face_color, hair_color, hair_style, eye_color, mouth) to int64 labels.
    """
    rgb, _, attrs = _render_faces(n, image_size, seed)
    return rgb, attrs


def write_synthetic_cartoon_folder(path, n: int, image_size: int = 64, seed: int = 0) -> Path:
    """Write ``cs<i>.png`` (RGBA, transparent background) and ``cs<i>.csv``, Cartoon Set style."""
    from PIL import Image

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    rgb, alpha, attrs = _render_faces(n, image_size, seed)
    rgba = np.concatenate([rgb, alpha[..., None]], axis=-1)
    pixels = np.round(rgba * 255.0).astype(np.uint8)
    for i in range(n):
        Image.fromarray(pixels[i], mode="RGBA").save(root / f"cs{i}.png")
        lines = [f'"{name}", {int(attrs[name][i])}, {count}' for name, count in FACE_ATTRS.items()]
        (root / f"cs{i}.csv").write_text("\n".join(lines) + "\n")
    return root


# --------------------------------------------------------------------------- dispatcher

@dataclasses.dataclass
class Dataset:
    """Images float32 NHWC in [0, 1] and integer labels (None where a folder has none)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray | None
    label_names: tuple

    @property
    def image_shape(self) -> tuple:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


def _split(n: int, test_fraction: float, seed: int):
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    return order[n_test:], order[:n_test]


def _labelled_split(name, images, attrs, label_attr, num_values, label_names, test_fraction, seed):
    train, test = _split(len(images), test_fraction, seed)
    if label_attr is None:
        return Dataset(name, images[train], None, images[test], None, ())
    if label_attr not in attrs:
        raise KeyError(f"{name}: no attribute {label_attr!r}; have {sorted(attrs)}")
    labels = attrs[label_attr]
    names = label_names or tuple(str(v) for v in range(num_values[label_attr]))
    return Dataset(name, images[train], labels[train], images[test], labels[test], tuple(names))


def _folder_label(folder, label_attr):
    """``label_attr`` if every image of the folder has it; None (an unlabelled dataset)
    if none has it, or, with a warning, if only some do: a made-up class for the others
    would be counted in every label metric and coloured as a real class."""
    if label_attr not in folder.attrs:
        return None
    missing = np.flatnonzero(folder.attrs[label_attr] < 0)
    if len(missing):
        warnings.warn(
            f"{len(missing)} of {len(folder)} images in {folder.root} have no {label_attr!r} "
            f"attribute (no .csv beside them, or none naming it; first: "
            f"{folder.files[missing[0]].name}): the dataset is used without labels",
            stacklevel=3)
        return None
    return label_attr


def load_dataset(
    name: str = "digits",
    *,
    fashion_mnist_path=None,
    image_size: int = 64,
    n: int = 2000,
    limit=None,
    label_attr: str | None = "hair_color",
    test_fraction: float = 0.1,
    seed: int = 0,
) -> Dataset:
    """Load a dataset by name into a :class:`Dataset`.

    ``"digits"`` (default, offline), ``"fashion_mnist"`` (``fashion_mnist_path`` for the
    offline IDX folder), ``"synthetic_faces"`` (``n`` faces of ``image_size``) or
    ``"folder:PATH"`` (a Cartoon Set folder resized to ``image_size``, at most ``limit``
    images). For faces and folders the labels are attribute ``label_attr`` and the split is
    a seeded ``test_fraction``; a folder without that attribute gets no labels.
    """
    if name == "digits":
        (x_train, y_train), (x_test, y_test) = load_digits_28(seed=seed)
        return Dataset(name, x_train, y_train, x_test, y_test, DIGIT_LABELS)
    if name == "fashion_mnist":
        (x_train, y_train), (x_test, y_test) = load_fashion_mnist(fashion_mnist_path)
        return Dataset(name, x_train, y_train, x_test, y_test, FASHION_MNIST_LABELS)
    if name == "synthetic_faces":
        images, attrs = synthetic_faces(n, image_size, seed)
        names = HAIR_COLOR_NAMES if label_attr == "hair_color" else None
        return _labelled_split(
            name, images, attrs, label_attr, FACE_ATTRS, names, test_fraction, seed
        )
    if name.startswith("folder:"):
        folder = scan_image_folder(name[len("folder:"):], limit=limit)
        images, attrs = load_image_folder(folder, image_size)
        label_attr = _folder_label(folder, label_attr)
        return _labelled_split(
            name, images, attrs, label_attr, folder.num_values, None, test_fraction, seed
        )
    raise ValueError(
        f"unknown dataset {name!r}: "
        "use 'digits', 'fashion_mnist', 'synthetic_faces' or 'folder:PATH'"
    )
