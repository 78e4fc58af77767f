"""sophia_common.images: InternVL dynamic tiling and normalisation with PIL + NumPy, no torchvision.

Hand-computed tile plans, the pixel pipeline checked against direct PIL resizes and torch arithmetic, and,
where vLLM is installed, against vLLM's copy of InternVL's preprocessing (its torch-free functions are
lifted out of the source file with ``ast``, since importing the module pulls torchvision).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sophia_common.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    IMG_CONTEXT,
    IMG_END,
    IMG_START,
    TilePlan,
    candidate_grids,
    image_dimensions,
    image_token_string,
    load_pixel_values,
    load_tiles,
    plan_tiles,
)
from tests.multirank import REPO, subprocess_env

MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
STD = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None, None]


def noise_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    channels = len(Image.new(mode, (1, 1)).getbands())
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def unnormalize(tiles: np.ndarray) -> np.ndarray:
    """float32 [N, 3, H, W] -> float [N, H, W, 3] in 0..255 units."""
    return np.moveaxis((tiles * STD + MEAN) * 255.0, 1, -1)


# ---------------------------------------------------------------- tile plans


@pytest.mark.parametrize(
    ("width", "height", "grid", "num_tiles"),
    [
        (1, 1, (1, 1), 1),  # tiny: one tile, no thumbnail
        (448, 448, (1, 1), 1),  # square, area 200704 <= 0.5*448^2*4: stays 1x1
        (633, 633, (1, 1), 1),  # 400689 <= 401408: tie with 2x2 not taken
        (634, 634, (2, 2), 5),  # 401956 > 401408: tie-break prefers 2x2
        (800, 800, (2, 2), 5),  # 640000 <= 903168 (3x3 threshold)
        (1000, 1000, (3, 3), 10),  # 1e6 > 903168: 3x3; 4x4 exceeds 12 tiles
        (10000, 10000, (3, 3), 10),  # huge square
        (200, 100, (2, 1), 3),  # 2:1 small
        (1800, 900, (4, 2), 9),  # 2:1 large: 1.62e6 > 802816 prefers 4x2
        (300, 900, (1, 3), 4),  # 1:3 small: 270000 <= 1204224 keeps 1x3
        (1000, 3000, (2, 6), 13),  # 1:3 large: 3e6 > 1204224 prefers 2x6
        (10000, 100, (12, 1), 13),  # extreme panorama: widest grid
        (100, 10000, (1, 12), 13),
        (640, 480, (4, 3), 13),  # 4:3 exactly; 8x6 exceeds 12 tiles
        (1280, 720, (4, 2), 9),  # 16:9: 2/1 closest (5x3 is 15 tiles); 921600 > 802816 prefers 4x2
        (1024, 768, (4, 3), 13),  # 4:3 again, larger
    ],
)
def test_plan_tiles_hand_computed(width, height, grid, num_tiles):
    plan = plan_tiles(width, height)
    assert (plan.cols, plan.rows) == grid
    assert plan.num_tiles == num_tiles
    assert plan.thumbnail == (grid != (1, 1))
    assert plan.resized_size == (grid[0] * 448, grid[1] * 448)
    assert plan.num_image_tokens() == 256 * num_tiles


def test_max_tiles_one_means_a_single_tile_and_no_thumbnail():
    for width, height in [(1, 1), (5000, 100), (100, 5000), (4000, 4000)]:
        plan = plan_tiles(width, height, max_tiles=1)
        assert (plan.cols, plan.rows, plan.thumbnail, plan.num_tiles) == (1, 1, False, 1)


def test_use_thumbnail_false_counts_only_the_grid():
    plan = plan_tiles(1000, 1000, use_thumbnail=False)
    assert (plan.cols, plan.rows, plan.num_tiles) == (3, 3, 9)


def test_min_tiles_forces_upsampling_of_a_tiny_image():
    plan = plan_tiles(1, 1, min_tiles=2)  # aspect 1: 2x2 (diff 0) beats 1x2 / 2x1
    assert (plan.cols, plan.rows, plan.num_tiles) == (2, 2, 5)


def test_ties_use_python_float_semantics_like_internvl():
    # 22/40 = 0.55 is exactly halfway between 1/2 and 3/5, but in floats 3/5 is strictly closer, so
    # InternVL picks 3x5; exact rational arithmetic would tie and keep 1x2 (880 px is far below threshold).
    assert 0.55 - 1 / 2 > 3 / 5 - 22 / 40
    plan = plan_tiles(22, 40, max_tiles=24)
    assert (plan.cols, plan.rows) == (3, 5)


def test_tie_break_threshold_scales_with_image_size():
    # With 16-pixel tiles, a 23x23 image (529 > 0.5*16*16*4 = 512) already prefers 2x2 over 1x1.
    assert (plan_tiles(22, 22, image_size=16).cols, plan_tiles(23, 23, image_size=16).cols) == (1, 2)


@pytest.mark.parametrize(("min_tiles", "max_tiles"),
                         [(1, 1), (1, 6), (1, 12), (2, 12), (4, 4), (6, 6), (1, 40)])
def test_candidate_grids_are_every_grid_in_range_sorted_by_count(min_tiles, max_tiles):
    grids = candidate_grids(min_tiles, max_tiles)
    expected = {(c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1)
                if min_tiles <= c * r <= max_tiles}
    assert set(grids) == expected and len(grids) == len(expected)
    counts = [c * r for c, r in grids]
    assert counts == sorted(counts)


def test_invalid_plan_arguments():
    with pytest.raises(ValueError, match="min_tiles"):
        plan_tiles(10, 10, min_tiles=3, max_tiles=2)
    with pytest.raises(ValueError, match="min_tiles"):
        plan_tiles(10, 10, min_tiles=0)
    with pytest.raises(ValueError, match="positive"):
        plan_tiles(0, 10)
    with pytest.raises(ValueError, match="thumbnail only"):
        TilePlan(width=10, height=10, cols=1, rows=1, thumbnail=True)
    plan = plan_tiles(1000, 700)
    assert TilePlan(**dataclasses.asdict(plan)) == plan  # stored as plain fields, rebuilt at load time


def test_image_token_string():
    assert IMG_START == "<img>" and IMG_END == "</img>" and IMG_CONTEXT == "<IMG_CONTEXT>"
    text = image_token_string(3)
    assert text.startswith("<img><IMG_CONTEXT>") and text.endswith("<IMG_CONTEXT></img>")
    assert text.count(IMG_CONTEXT) == 768 and len(text) == len("<img></img>") + 768 * len(IMG_CONTEXT)
    assert image_token_string(2, tokens_per_tile=4) == "<img>" + "<IMG_CONTEXT>" * 8 + "</img>"
    with pytest.raises(ValueError):
        image_token_string(0)


# ---------------------------------------------------------------- pixels


def test_load_tiles_shape_and_dtype():
    # aspect 3: 3x1 (768 px < 1536 needed for 6x2) + thumbnail
    tiles = load_tiles(noise_image(48, 16), image_size=16)
    assert tiles.shape == (4, 3, 16, 16) and tiles.dtype == np.float32 and tiles.flags.c_contiguous
    assert load_tiles(noise_image(20, 20), image_size=16).shape == (1, 3, 16, 16)
    assert load_tiles(noise_image(50, 20), image_size=16).shape == (11, 3, 16, 16)  # 2.5 = 5/2 exactly


def test_solid_colour_normalises_exactly():
    colour = (200, 17, 255)
    tiles = load_tiles(Image.new("RGB", (70, 30), colour), image_size=16)
    assert tiles.shape[0] == plan_tiles(70, 30, image_size=16).num_tiles > 1
    for channel, value in enumerate(colour):
        expected = (np.float32(value) / np.float32(255) - np.float32(IMAGENET_MEAN[channel])) / np.float32(
            IMAGENET_STD[channel])
        assert np.all(tiles[:, channel] == expected), channel


def test_grid_tiles_reassemble_the_bicubic_resized_image():
    image = noise_image(101, 67, seed=1)
    plan = plan_tiles(*image.size, image_size=16, max_tiles=12)
    assert (plan.cols, plan.rows) == (3, 2)
    tiles = unnormalize(load_tiles(image, plan))
    grid = tiles[: plan.grid_tiles].reshape(plan.rows, plan.cols, 16, 16, 3)
    canvas = grid.transpose(0, 2, 1, 3, 4).reshape(plan.rows * 16, plan.cols * 16, 3)  # row-major tiles
    direct = np.asarray(image.resize(plan.resized_size, Image.Resampling.BICUBIC), dtype=np.float64)
    assert np.abs(canvas - direct).max() < 1e-3


def test_thumbnail_is_the_whole_image_resized_bicubic():
    image = noise_image(101, 67, seed=2)
    thumbnail = unnormalize(load_tiles(image, image_size=16))[-1]
    direct = np.asarray(image.resize((16, 16), Image.Resampling.BICUBIC), dtype=np.float64)
    assert np.abs(thumbnail - direct).max() < 1e-3


def test_normalisation_matches_torch_to_tensor_and_normalize_bitwise():
    torch = pytest.importorskip("torch")
    image = noise_image(40, 25, seed=3)
    plan = plan_tiles(*image.size, image_size=16, use_thumbnail=False)
    assert (plan.cols, plan.rows, plan.num_tiles) == (3, 2, 6)  # 1.6: 3/2 is closest
    # torchvision ToTensor: uint8 -> float32 .div(255), CHW; Normalize: .sub(mean).div(std) in float32
    canvas = np.asarray(image.resize(plan.resized_size, Image.Resampling.BICUBIC))
    reference = torch.from_numpy(canvas.copy()).permute(2, 0, 1).to(torch.float32).div(255)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    reference = reference.sub(mean).div(std)
    reference = torch.stack([reference[:, 16 * row:16 * (row + 1), 16 * col:16 * (col + 1)]
                             for row in range(plan.rows) for col in range(plan.cols)])
    assert torch.equal(torch.from_numpy(load_tiles(image, plan)), reference)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_bytes_path_and_pil_inputs_agree(tmp_path, mode):
    image = noise_image(50, 20, mode="RGB", seed=4).convert(mode)
    data = png_bytes(image)
    path = tmp_path / "sample.png"
    path.write_bytes(data)
    from_pil = load_tiles(image, image_size=16)
    for source in (data, path, str(path)):
        np.testing.assert_array_equal(load_tiles(source, image_size=16), from_pil)
    np.testing.assert_array_equal(from_pil, load_tiles(image.convert("RGB"), image_size=16))  # alpha dropped
    assert image_dimensions(data) == image_dimensions(path) == image_dimensions(image) == (50, 20)


def test_plan_and_tiling_arguments(tmp_path):
    image = noise_image(50, 20)
    plan = plan_tiles(50, 20, image_size=16)
    np.testing.assert_array_equal(load_tiles(image, plan), load_tiles(image, image_size=16))
    with pytest.raises(TypeError, match="either"):
        load_tiles(image, plan, image_size=16)
    with pytest.raises(ValueError, match="50x21 image but the image is 50x20"):
        load_tiles(image, TilePlan(width=50, height=21, cols=2, rows=1, image_size=16))


def test_load_pixel_values_returns_torch():
    torch = pytest.importorskip("torch")
    pixel_values = load_pixel_values(noise_image(50, 20), image_size=16, dtype=torch.bfloat16)
    assert pixel_values.dtype == torch.bfloat16 and tuple(pixel_values.shape) == (11, 3, 16, 16)


def test_unreadable_images_raise_value_error_naming_the_source(tmp_path):
    missing = tmp_path / "missing.jpg"
    with pytest.raises(ValueError, match=r"missing\.jpg.*No such file"):
        load_tiles(missing)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=r"garbage\.png.*cannot identify"):
        load_tiles(garbage)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(png_bytes(noise_image(64, 64))[:200])
    with pytest.raises(ValueError, match=r"truncated\.png"):
        load_tiles(truncated)
    with pytest.raises(ValueError, match=r"image bytes \(5 bytes\).*cannot identify"):
        load_tiles(b"abcde")
    with pytest.raises(ValueError, match=r"missing\.jpg"):
        image_dimensions(missing)


def test_module_import_is_light():
    code = ("import sys, sophia_common.images\n"
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(), capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- InternVL's own code, via vLLM's copy

VLLM_FUNCTIONS = ("find_closest_aspect_ratio", "get_internvl_target_ratios", "calculate_internvl_targets",
                  "dynamic_preprocess_internvl")


@pytest.fixture(scope="module")
def internvl_reference() -> dict:
    """vLLM's torch-free InternVL preprocessing functions, compiled from its source without importing it."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("vLLM is not installed")
    source = Path(spec.submodule_search_locations[0]) / "transformers_utils" / "processors" / "internvl.py"
    if not source.is_file():
        pytest.skip(f"{source} not found")
    tree = ast.parse(source.read_text())
    functions = [node for node in tree.body
                 if isinstance(node, ast.FunctionDef) and node.name in VLLM_FUNCTIONS]
    if sorted(node.name for node in functions) != sorted(VLLM_FUNCTIONS):
        pytest.skip(f"{source} no longer defines {VLLM_FUNCTIONS}")
    namespace: dict = {"Image": Image}
    exec(compile(ast.Module(body=functions, type_ignores=[]), str(source), "exec"), namespace)
    return namespace


@pytest.mark.parametrize(("min_tiles", "max_tiles"), [(1, 12), (1, 6), (1, 24), (2, 12), (4, 4), (6, 6)])
def test_plans_match_internvl_reference(internvl_reference, min_tiles, max_tiles):
    ratios = internvl_reference["get_internvl_target_ratios"](min_tiles, max_tiles)
    assert candidate_grids(min_tiles, max_tiles) == ratios  # same order, ties included
    targets = internvl_reference["calculate_internvl_targets"]
    sizes = [(w, h) for w in range(1, 700, 23) for h in range(1, 700, 19)]
    sizes += [(20, 8), (55, 22), (22, 40), (29, 70), (634, 634), (1800, 900), (1000, 3000), (4032, 3024)]
    for width, height in sizes:
        blocks, target_width, target_height = targets(
            orig_width=width, orig_height=height, target_ratios=ratios, image_size=448, use_thumbnail=True)
        plan = plan_tiles(width, height, min_tiles=min_tiles, max_tiles=max_tiles)
        assert (plan.num_tiles, *plan.resized_size) == (blocks, target_width, target_height), (width, height)


@pytest.mark.parametrize("size", [(101, 67), (30, 90), (16, 16), (200, 20)])
def test_pixels_match_internvl_reference(internvl_reference, size):
    torch = pytest.importorskip("torch")
    image = noise_image(*size, seed=5)
    ratios = internvl_reference["get_internvl_target_ratios"](1, 12)
    reference_tiles = internvl_reference["dynamic_preprocess_internvl"](
        image, target_ratios=ratios, image_size=16, use_thumbnail=True)
    # build_transform: Resize((16, 16)) is the identity on 16x16 tiles; then ToTensor + Normalize
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    reference = torch.stack([
        torch.from_numpy(np.array(tile)).permute(2, 0, 1).to(torch.float32).div(255).sub(mean).div(std)
        for tile in reference_tiles
    ])
    assert torch.equal(torch.from_numpy(load_tiles(image, image_size=16)), reference)
