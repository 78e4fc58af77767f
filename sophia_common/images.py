"""InternVL image preprocessing, owned with PIL and NumPy: dynamic tiling, bicubic resize, ImageNet norm.

Why this exists: vLLM's and Transformers' InternVL processors import torchvision, which has no CPU
build (``sophia_common/torchvision_shim.py`` only lets its Python side import). Rollout (captioning with
the Transformers engine; packing, which pre-expands ``<IMG_CONTEXT>`` tokens and so must know each
image's tile count) and training (the loader turns stored image bytes into pixels at load time,
docs/ALGORITHM.md §2) all need the same
preprocessing, so it lives here once, importing only NumPy and PIL (torch only inside
:func:`load_pixel_values`).

The reference is InternVL's own code: ``load_image`` / ``dynamic_preprocess`` /
``find_closest_aspect_ratio`` / ``build_transform`` in the InternVL chat model cards and
``internvl_chat/internvl/train/dataset.py`` (vLLM's ``transformers_utils/processors/internvl.py`` is a
copy of it). Step by step:

1. ``Image.open(...).convert("RGB")`` — alpha is dropped, not composited; no EXIF rotation.
2. Grid choice (:func:`plan_tiles`): among all ``(cols, rows)`` with ``min <= cols*rows <= max``, the one
   whose ``cols/rows`` is closest to ``width/height``; on an exact tie, a later candidate (candidates are
   sorted by tile count) replaces the current one when ``width*height > 0.5 * image_size**2 * cols*rows``,
   i.e. more tiles are preferred while the image has more than half their pixel area. Python float
   arithmetic is kept on purpose: exact rationals disagree with InternVL on ties (22x40 with 24 tiles).
3. ``image.resize((cols*image_size, rows*image_size))`` — PIL's default filter for RGB, which is BICUBIC
   (passed explicitly here); tiles are cut row-major. When ``use_thumbnail`` and there is more than one
   tile, the whole image resized to ``image_size x image_size`` (PIL bicubic) is appended.
4. ``build_transform``: torchvision ``T.Resize((s, s), BICUBIC)`` on each PIL tile, which calls PIL's
   ``Image.resize(..., BICUBIC)`` and is a no-op here (every tile is already ``s x s``; PIL copies an
   image already at the requested size); ``ToTensor`` (uint8 -> float32 ``.div(255)``, CHW);
   ``Normalize`` (``.sub(mean).div(std)`` in float32). The same float32 operations run here in NumPy
   (checked bit for bit against torch on CPU), so with the same Pillow version the pixels are InternVL's.

Where others differ: Transformers' ``get_optimal_tiled_canvas`` (GotOcr2 / InternVL ``-hf`` processors)
orders grids of equal tile count width-major instead of InternVL's set order, which changes the grid only
on a tie between two equal tile counts (seen only with ``min_tiles > 1``, e.g. a 20x8 image with
``min_tiles = max_tiles = 4``); its PIL backend (``GotOcr2ImageProcessorPil``, transformers 5.19) otherwise
gave bit-identical pixels, while its torchvision backend resizes tensors with torchvision's antialiased
bicubic, close to but not equal to PIL's. vLLM composites transparent images onto white before tiling
(InternVL drops alpha). InternVL's training-time JPEG re-compression augmentation
(``build_transform(is_train=True)``) is not reproduced.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

IMG_START = "<img>"
IMG_END = "</img>"
IMG_CONTEXT = "<IMG_CONTEXT>"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TOKENS_PER_TILE = 256  # 448 / 14 = 32 patches per side, pixel shuffle 0.5 -> 16 x 16 (docs/ALGORITHM.md §3)

ImageSource = bytes | bytearray | memoryview | str | Path | Image.Image

# PIL reports unreadable data with several exception types (UnidentifiedImageError is an OSError,
# truncated files raise OSError, some plugins SyntaxError/ValueError, huge images DecompressionBombError).
_PIL_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class TilePlan:
    """How one image is tiled: the source size, the chosen grid and whether a thumbnail follows it."""

    width: int
    height: int
    cols: int
    rows: int
    image_size: int = 448
    thumbnail: bool = True

    def __post_init__(self) -> None:
        if min(self.width, self.height, self.cols, self.rows, self.image_size) < 1:
            raise ValueError(f"TilePlan sizes must be positive: {self}")
        if self.thumbnail and self.cols * self.rows == 1:
            raise ValueError(f"InternVL adds a thumbnail only to a grid of several tiles: {self}")

    @property
    def grid_tiles(self) -> int:
        return self.cols * self.rows

    @property
    def num_tiles(self) -> int:
        return self.grid_tiles + int(self.thumbnail)

    @property
    def resized_size(self) -> tuple[int, int]:
        """(width, height) the whole image is resized to before it is cut into tiles."""
        return self.cols * self.image_size, self.rows * self.image_size

    def num_image_tokens(self, tokens_per_tile: int = TOKENS_PER_TILE) -> int:
        """``<IMG_CONTEXT>`` tokens for this image (``<img>`` / ``</img>`` not counted)."""
        return self.num_tiles * tokens_per_tile


def candidate_grids(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """InternVL's candidate ``(cols, rows)`` grids, in the order its search visits them.

    All grids with ``min_tiles <= cols*rows <= max_tiles``, sorted (stably) by tile count. Within one tile
    count the order is that of the Python set InternVL builds, which is deterministic in CPython (int
    tuples hash without randomisation); the set is built with the same generator so the order matches.
    """
    if not 1 <= min_tiles <= max_tiles:
        raise ValueError(f"need 1 <= min_tiles <= max_tiles, got {min_tiles=}, {max_tiles=}")
    grids = {
        (cols, rows)
        for count in range(min_tiles, max_tiles + 1)
        for cols in range(1, count + 1)
        for rows in range(1, count + 1)
        if min_tiles <= cols * rows <= max_tiles
    }
    return sorted(grids, key=lambda grid: grid[0] * grid[1])


def closest_grid(width: int, height: int, grids: list[tuple[int, int]], image_size: int) -> tuple[int, int]:
    """InternVL's ``find_closest_aspect_ratio``: the grid whose aspect ratio is closest to the image's.

    On an exact (float) tie a later grid wins when the image area exceeds half the grid's pixel area.
    ``2 * area > image_size**2 * tiles`` is the integer form of InternVL's ``area > 0.5 * s * s * tiles``
    (identical: both sides are exact below 2**53).
    """
    aspect_ratio = width / height
    best_grid, best_diff = (1, 1), float("inf")
    for cols, rows in grids:
        diff = abs(aspect_ratio - cols / rows)
        if diff < best_diff:
            best_grid, best_diff = (cols, rows), diff
        elif diff == best_diff and 2 * width * height > image_size * image_size * cols * rows:
            best_grid = (cols, rows)
    return best_grid


def plan_tiles(
    width: int,
    height: int,
    *,
    min_tiles: int = 1,
    max_tiles: int = 12,
    image_size: int = 448,
    use_thumbnail: bool = True,
) -> TilePlan:
    """The tiling InternVL's ``dynamic_preprocess`` applies to a ``width x height`` image; no pixels needed.

    ``num_tiles`` is ``cols*rows``, plus one thumbnail when ``use_thumbnail`` and ``cols*rows > 1``.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    cols, rows = closest_grid(width, height, candidate_grids(min_tiles, max_tiles), image_size)
    return TilePlan(width=width, height=height, cols=cols, rows=rows, image_size=image_size,
                    thumbnail=use_thumbnail and cols * rows > 1)


def image_token_string(num_tiles: int, tokens_per_tile: int = TOKENS_PER_TILE) -> str:
    """InternVL's image expansion: ``<img>``, ``<IMG_CONTEXT>`` x (tokens_per_tile*num_tiles), ``</img>``."""
    if num_tiles < 1 or tokens_per_tile < 1:
        raise ValueError(f"need positive num_tiles and tokens_per_tile, got {num_tiles}, {tokens_per_tile}")
    return IMG_START + IMG_CONTEXT * (tokens_per_tile * num_tiles) + IMG_END


def _describe(source: ImageSource) -> str:
    if isinstance(source, bytes | bytearray | memoryview):
        return f"image bytes ({len(source)} bytes)"
    return f"image file {str(source)!r}"


def _open_lazily(source: bytes | bytearray | memoryview | str | Path) -> Image.Image:
    if isinstance(source, bytes | bytearray | memoryview):
        return Image.open(io.BytesIO(bytes(source)))
    return Image.open(Path(source))


def image_dimensions(source: ImageSource) -> tuple[int, int]:
    """(width, height) of an image, reading only its header (what packing needs to plan tiles)."""
    if isinstance(source, Image.Image):
        return source.size
    try:
        with _open_lazily(source) as image:
            return image.size
    except _PIL_READ_ERRORS as error:
        raise ValueError(f"cannot read {_describe(source)}: {error}") from error


def open_rgb(source: ImageSource) -> Image.Image:
    """Decode an image to RGB as InternVL's ``Image.open(...).convert('RGB')`` does (alpha dropped).

    Raises ``ValueError`` naming the file (or "image bytes") and PIL's message when it cannot be read.
    """
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    try:
        with _open_lazily(source) as image:
            image.load()  # decode now, so truncated data fails here with its name attached
            return image.convert("RGB")
    except _PIL_READ_ERRORS as error:
        raise ValueError(f"cannot read {_describe(source)}: {error}") from error


def normalize_tile_pixels(pixels: np.ndarray) -> np.ndarray:
    """uint8 ``[..., H, W, 3]`` -> float32 ``[..., 3, H, W]``, as torchvision ToTensor + Normalize do it."""
    scaled = pixels.astype(np.float32) / np.float32(255)
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    normalized = (scaled - mean) / std
    return np.ascontiguousarray(np.moveaxis(normalized, -1, -3))


def _resolve_plan(image: Image.Image, plan: TilePlan | None, tiling: dict[str, Any]) -> TilePlan:
    if plan is None:
        return plan_tiles(*image.size, **tiling)
    if tiling:
        raise TypeError(f"pass either a TilePlan or tiling parameters, not both (got {sorted(tiling)})")
    if (plan.width, plan.height) != image.size:
        raise ValueError(f"TilePlan is for a {plan.width}x{plan.height} image but the image is "
                         f"{image.size[0]}x{image.size[1]}; its token count would be wrong")
    return plan


def tile_images(image: Image.Image, plan: TilePlan) -> list[Image.Image]:
    """The PIL tiles of ``dynamic_preprocess``: the grid row-major, then the thumbnail if planned."""
    size = plan.image_size
    resized = image.resize(plan.resized_size, Image.Resampling.BICUBIC)
    tiles = [
        resized.crop((col * size, row * size, (col + 1) * size, (row + 1) * size))
        for row in range(plan.rows)
        for col in range(plan.cols)
    ]
    if plan.thumbnail:
        tiles.append(image.resize((size, size), Image.Resampling.BICUBIC))
    return tiles


def load_tiles(image: ImageSource, plan: TilePlan | None = None, **tiling: Any) -> np.ndarray:
    """InternVL ``load_image``: ``[num_tiles, 3, image_size, image_size]`` float32, ImageNet-normalised.

    ``image`` is encoded bytes, a path, or a PIL image (converted to RGB). Give either a ``plan`` from
    :func:`plan_tiles` (checked against the decoded size, so the pre-expanded tokens stay exact) or the
    tiling parameters of :func:`plan_tiles` (``min_tiles``, ``max_tiles``, ``image_size``, ``use_thumbnail``).
    """
    rgb = open_rgb(image)
    plan = _resolve_plan(rgb, plan, tiling)
    pixels = np.stack([np.asarray(tile, dtype=np.uint8) for tile in tile_images(rgb, plan)])
    return normalize_tile_pixels(pixels)


def load_pixel_values(
    image: ImageSource, plan: TilePlan | None = None, *, dtype: torch.dtype | None = None, **tiling: Any
) -> torch.Tensor:
    """:func:`load_tiles` as a torch tensor (``pixel_values`` for InternVL), optionally cast to ``dtype``."""
    import torch

    pixel_values = torch.from_numpy(load_tiles(image, plan, **tiling))
    return pixel_values if dtype is None else pixel_values.to(dtype)
