"""What the evaluated model is sent: chat messages, one image, and the content key of each response.

* ``messages(question, system)`` — the system prompt (paper: the slow-thinking one) and one user
  turn holding the question text (``Question.text``: the response hint first, then the question
  and its options). The engine puts the image before the text, as InternVL expects.
* ``request_image(question, side)`` — the question's image; a multi-image question (MMMU,
  MV-MATH, OlympiadBench) becomes one composite: the images side by side (wrapping into rows),
  each scaled to fit ``side`` pixels and labelled "Image k" to match the question's
  ``<image k>`` references. The engines take one image per request; VLMEvalKit does the same
  for single-image models.
* ``generation_key(...)`` — a digest of everything that decides a response: the messages, the
  image bytes, the model (its config and weight files' sizes and times) and the sampling settings.
  The store is keyed by it, so a rerun with anything changed computes fresh responses and never
  mixes them with stale ones, and an unchanged rerun recomputes nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

from evaluation.formats import Question

LABEL_HEIGHT = 18
_GAP = 8


def messages(question: Question, system: str) -> tuple[dict[str, str], ...]:
    turns = [{"role": "user", "content": question.text}]
    if system:
        turns.insert(0, {"role": "system", "content": system})
    return tuple(turns)


def request_image(question: Question, side: int) -> bytes | Path | None:
    if not question.images:
        return None
    if len(question.images) == 1:
        return question.images[0]
    return compose(question.images, side)


def compose(images: tuple[bytes | Path, ...], side: int) -> bytes:
    """One PNG holding every image, each within ``side`` x ``side``, labelled "Image 1", "Image 2", ..."""
    from PIL import Image, ImageDraw

    from sophia_common.images import open_rgb

    tiles = []
    for image in images:
        tile = open_rgb(image)
        tile.thumbnail((side, side))
        tiles.append(tile)
    columns = min(len(tiles), 3)
    rows = -(-len(tiles) // columns)
    cell_w, cell_h = max(t.width for t in tiles), max(t.height for t in tiles) + LABEL_HEIGHT
    canvas = Image.new("RGB", (columns * cell_w + (columns - 1) * _GAP, rows * cell_h + (rows - 1) * _GAP), "white")
    draw = ImageDraw.Draw(canvas)
    for index, tile in enumerate(tiles):
        x, y = (index % columns) * (cell_w + _GAP), (index // columns) * (cell_h + _GAP)
        draw.text((x + 2, y + 2), f"Image {index + 1}", fill="black")
        canvas.paste(tile, (x, y + LABEL_HEIGHT))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def model_fingerprint(model: str) -> str:
    """config.json plus the names, sizes and mtimes of the weight files (a hub id: the id itself)."""
    root = Path(model)
    if not root.is_dir():
        return model
    digest = hashlib.sha256()
    config = root / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for path in sorted(root.glob("*.safetensors")) + sorted(root.glob("*.bin")):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def generation_key(question: Question, turns: tuple[dict[str, str], ...], settings: dict) -> str:
    """The content key of one question's responses (``settings``: model fingerprint and sampling)."""
    payload = json.dumps({"benchmark": question.benchmark, "id": question.id, "messages": turns,
                          "images": question.image_digest(), "settings": settings}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]
