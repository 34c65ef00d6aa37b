"""Data sets: the built-in digits and photos, ImageFolder directories and torchvision sets.

Nothing here touches the network unless the caller passes ``download=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from .errors import DataError

__all__ = [
    "DataSplits",
    "BUILTIN_DATA",
    "digits_splits",
    "photos_splits",
    "load_data",
    "make_loader",
    "calibration_batches",
]

DIGITS = "digits"
DIGITS_SPLIT_SEED = 0
PHOTOS = "photos"
#: scikit-image's colour photographs that ship inside its wheel, one class each
PHOTO_NAMES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "motorcycle",
)
#: the built-in data sets: name -> channels
BUILTIN_DATA = {DIGITS: 1, PHOTOS: 3}


@dataclass
class DataSplits:
    """Train / validation (/ test) data sets with their image geometry."""

    train: Dataset
    val: Dataset
    test: Dataset | None
    num_classes: int
    name: str


def _digits_tensor(img_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    if img_size != 8:
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    x = (x - 0.5) / 0.5
    return x, torch.tensor(d.target, dtype=torch.long)


def digits_splits(img_size: int = 16) -> DataSplits:
    """scikit-learn's 1,797 real 8x8 digits, upsampled, with a fixed stratified 65/15/20 split."""
    from sklearn.model_selection import train_test_split

    x, y = _digits_tensor(img_size)
    idx = torch.arange(len(y)).numpy()
    rest, test = train_test_split(idx, test_size=0.20, random_state=DIGITS_SPLIT_SEED, stratify=y)
    train, val = train_test_split(
        rest, test_size=0.1875, random_state=DIGITS_SPLIT_SEED, stratify=y[rest]
    )

    def sub(i):
        i = torch.as_tensor(i)
        return TensorDataset(x[i], y[i])

    return DataSplits(sub(train), sub(val), sub(test), num_classes=10, name=DIGITS)


def _photo(name: str) -> torch.Tensor:
    import skimage.data as skd

    im = skd.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skd, name)()
    return torch.from_numpy(im[..., :3].copy()).permute(2, 0, 1).float() / 255.0


def photos_splits(img_size: int = 32, short_side: int = 384, tile: int = 64) -> DataSplits:
    """32x32 RGB patches of scikit-image's 8 colour photographs; the class is the photograph.

    Each photograph is resized to ``short_side`` pixels on its short side and cut into
    ``tile`` x ``tile`` tiles; the tiles of each photograph are split 55/15/30 into
    train/val/test (a fixed permutation), so no two splits share a pixel. Every tile gives
    nine ``img_size`` patches on a stride of ``(tile - img_size) / 2``: 1,701 train, 459 val
    and 1,026 test patches. Many patches are flat (sky, black border, background), which keeps
    the task hard: a logistic regression on the pixels scores 56 % on test.
    """
    try:
        import skimage.data  # noqa: F401
    except ImportError:
        raise DataError(
            "the photos data set needs scikit-image: pip install scikit-image"
        ) from None
    gen = torch.Generator().manual_seed(DIGITS_SPLIT_SEED)
    parts: dict[str, tuple[list, list]] = {s: ([], []) for s in ("train", "val", "test")}
    stride = (tile - img_size) // 2
    for label, name in enumerate(PHOTO_NAMES):
        im = _photo(name)
        h, w = im.shape[1:]
        s = short_side / min(h, w)
        im = F.interpolate(
            im[None], size=(round(h * s), round(w * s)), mode="bilinear", antialias=True
        )[0].clamp(0, 1)
        rows, cols = im.shape[1] // tile, im.shape[2] // tile
        n = rows * cols
        n_train, n_val = int(0.55 * n), int(0.15 * n)
        for k, t in enumerate(torch.randperm(n, generator=gen).tolist()):
            split = "train" if k < n_train else "val" if k < n_train + n_val else "test"
            i, j = divmod(t, cols)
            for a in (0, stride, 2 * stride):
                for b in (0, stride, 2 * stride):
                    y0, x0 = i * tile + a, j * tile + b
                    parts[split][0].append(im[:, y0 : y0 + img_size, x0 : x0 + img_size])
                    parts[split][1].append(label)

    def ds(split):
        xs, ys = parts[split]
        return TensorDataset((torch.stack(xs) - 0.5) / 0.5, torch.tensor(ys, dtype=torch.long))

    return DataSplits(ds("train"), ds("val"), ds("test"), num_classes=len(PHOTO_NAMES), name=PHOTOS)


def image_transform(data_config: dict, in_chans: int):
    """timm's eval transform for ``data_config`` (resize, centre crop, normalise), grey when needed.

    ``data_config`` is what :func:`timm.data.resolve_data_config` returns: ``input_size``,
    ``interpolation``, ``mean``, ``std``, ``crop_pct``, ``crop_mode``.
    """
    from timm.data import create_transform
    from torchvision import transforms as T

    tf = create_transform(**data_config, is_training=False)
    if in_chans == 1:  # ImageFolder reads RGB; a grey model wants one channel before normalising
        tf = T.Compose([T.Grayscale(1), *tf.transforms])
    return tf


def load_data(
    data: str | None,
    *,
    img_size: int,
    in_chans: int,
    transform=None,
    download: bool = False,
    root: str | Path | None = None,
) -> DataSplits:
    """Resolves ``--data``: None (digits), an ImageFolder directory, or a torchvision name.

    Args:
        data: None or ``digits`` for the built-in digits, ``photos`` for the built-in
            photographs (:func:`photos_splits`); a directory holding ``train/`` and ``val/`` (and
            optionally ``test/``) class folders; or a torchvision data set name (``cifar10``,
            ``mnist``, ...).
        img_size: Side length the model expects.
        in_chans: Channels the model expects.
        transform: The model's eval transform (:func:`image_transform`); without it the
            image data sets are returned untransformed, for the caller to set ``.transform``.
        download: Allow a torchvision data set to be downloaded.
        root: Where torchvision data sets live (default ``~/.cache/prunetune/data``).
    """
    if data is None:
        data = DIGITS
    if data in BUILTIN_DATA:
        if in_chans != BUILTIN_DATA[data]:
            raise DataError(
                f"the built-in {data} data set has {BUILTIN_DATA[data]} channel(s) but the model "
                f"expects {in_chans}; pass --data"
            )
        return digits_splits(img_size) if data == DIGITS else photos_splits(img_size)
    if not isinstance(data, str) or not data.strip():
        raise DataError(f"--data must name a directory or a torchvision data set, but got {data!r}")
    tf = transform  # may be set later on every split's data set (``.transform``)
    path = Path(data)
    if path.is_dir():
        return _image_folder(path, tf)
    if path.exists():
        raise DataError(
            f"--data {data} is a file; pass an ImageFolder directory holding train/ and val/"
        )
    if "/" in data or path.suffix:
        raise DataError(f"data directory {data} does not exist")
    return _torchvision(data, tf, download, Path(root or Path.home() / ".cache/prunetune/data"))


def _read_image(path: str):
    """ImageFolder's loader, with a one-line :class:`DataError` naming an unreadable file.

    Images are read lazily (when a batch needs them), so a corrupt file surfaces here.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except UnidentifiedImageError:
        msg = "not an image format PIL recognises"
    except Exception as e:  # corrupt or truncated images raise many different types
        msg = " ".join(str(e).split())[:200] or type(e).__name__
    raise DataError(f"cannot read image {path}: {msg}; remove or fix it")


def _image_folder(path: Path, tf) -> DataSplits:
    from torchvision.datasets import ImageFolder

    for split in ("train", "val"):
        if not (path / split).is_dir():
            raise DataError(
                f"data directory {path} has no {split}/ folder; expected "
                f"{path}/{{train,val}}/<class>/<image>"
            )
    splits = {}
    names = ("train", "val", "test") if (path / "test").is_dir() else ("train", "val")
    for split in names:
        d = path / split
        try:
            splits[split] = ImageFolder(str(d), transform=tf, loader=_read_image)
        except (FileNotFoundError, RuntimeError) as e:
            raise DataError(
                f"data directory {d} holds no images: {str(e).splitlines()[0]}"
            ) from None
        except OSError as e:
            raise DataError(f"data directory {d} cannot be read ({e.strerror or e})") from None
    for split in names[1:]:
        if splits["train"].classes != splits[split].classes:
            only_train = sorted(set(splits["train"].classes) - set(splits[split].classes))
            only_other = sorted(set(splits[split].classes) - set(splits["train"].classes))
            raise DataError(
                f"train/ and {split}/ in {path} must have the same class folders, but train/ "
                f"alone has "
                f"{only_train[:3]} and {split}/ alone has {only_other[:3]}"
            )
    return DataSplits(
        splits["train"], splits["val"], splits.get("test"), len(splits["train"].classes), str(path)
    )


def _torchvision(name: str, tf, download: bool, root: Path) -> DataSplits:
    import torchvision.datasets as tvd

    table = {n.lower(): n for n in tvd.__all__}
    cls_name = table.get(name.lower())
    if cls_name is None:
        raise DataError(f"--data {name!r} is neither a directory nor a torchvision data set name")
    cls = getattr(tvd, cls_name)
    try:
        train = cls(str(root), train=True, transform=tf, download=download)
        val = cls(str(root), train=False, transform=tf, download=download)
    except RuntimeError as e:
        hint = "" if download else "; pass --download to fetch it"
        raise DataError(
            f"{cls_name} not found under {root}{hint} ({str(e).splitlines()[0]})"
        ) from None
    except TypeError:
        raise DataError(
            f"torchvision data set {cls_name} has no train/test split; use an ImageFolder"
        ) from None
    classes = getattr(train, "classes", None)
    return DataSplits(train, val, None, len(classes) if classes else 0, cls_name)


def make_loader(ds: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g, num_workers=0)


def calibration_batches(ds: Dataset, num_samples: int, batch_size: int, seed: int = 0) -> list:
    """A fixed random subset of ``ds`` as a list of (x, y) batches (for saliency, proxies)."""
    if len(ds) == 0:
        raise DataError("the calibration data set is empty")
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DataError(f"`{name} >= 1` must hold (an integer), but got {name}={value!r}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[: min(num_samples, len(ds))].tolist()
    return [batch for batch in make_loader(Subset(ds, idx), batch_size)]
