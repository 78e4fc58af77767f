"""The demo's synthetic image task, generated on the fly: coloured circles, two kinds of questions.

What: every image is a 448 x 448 light-gray canvas (one InternVL tile) with 1-3 circles of one
colour. A scene's *true description* (what a perfect captioner would write) is
``"The image shows two red circles on a light gray background."``; its questions are

* ``colour`` (difficulty ``easy``): "What colour are the shapes in the image?" -> ``red``;
* ``count`` (difficulty ``hard``): "How many circles are there in the image?" -> ``2``.

Why these attributes: the policy's vision tower and projector are frozen *random* weights (only
the language model learns), so a question must hinge on what a random ViT still separates.
A linear probe on its mean-pooled tile features (240 scenes, 25 % held out) separated the
colour and the number of circles perfectly, but left or right placement only at chance level
(position lives in the token order, which a tiny LM does not learn to read in a few dozen
steps); so colour and count are asked, never position or shape.

Files written by :func:`write_task` (all JSONL, image paths relative to the file):

* ``rollout_inputs.jsonl`` — the SOPHIA questions (DESIGN §3.1: id, image, question, answer,
  source, difficulty), one question per image, alternating colour / count;
* ``captioner_sft.jsonl`` — warm-up VQA records on *other* images: the caption prompt -> the true
  description (``sophia-rollout pack`` kind ``vqa``);
* ``reasoner_sft.jsonl`` — text warm-up records for the reasoning LLM: a description (true, or of
  another scene) + a question -> a short ``<think>`` trajectory ending in ``\\boxed{}``, always
  answering what the *description* says, so it answers right from a right caption and wrong from
  a wrong one;
* ``mix_text.jsonl`` / ``mix_vqa.jsonl`` — the text-only and VQA samples mixed into the SOPHIA
  update (arithmetic with ``<think>``; image description on warm-up images);
* ``eval_inputs.jsonl`` — held-out questions on yet other images, which the policy answers itself
  before and after the update (``sophia_tools.demo.evaluate``).

Everything is a function of the seeds: rerunning writes byte-identical files.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40)}
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
BACKGROUND = (235, 235, 235)
IMAGE_SIZE = 448
RADIUS = 70
SOURCE = "demo/circles"
QUESTIONS = {"colour": "What colour are the shapes in the image?",
             "count": "How many circles are there in the image?"}
DIFFICULTY = {"colour": "easy", "count": "hard"}


@dataclass(frozen=True)
class Scene:
    """What one image shows: ``count`` circles of ``colour`` at ``centres`` (pixels)."""

    colour: str
    count: int
    centres: tuple[tuple[int, int], ...]

    @property
    def description(self) -> str:
        return describe(self.colour, self.count)

    def answer(self, kind: str) -> str:
        return self.colour if kind == "colour" else str(self.count)


def describe(colour: str, count: int) -> str:
    """The true description of a scene: what the captioner is warmed up to write."""
    noun = "circle" if count == 1 else "circles"
    return f"The image shows {COUNT_WORDS[count]} {colour} {noun} on a light gray background."


def random_scene(rng: random.Random) -> Scene:
    colour, count = rng.choice(sorted(COLOURS)), rng.randint(1, 3)
    centres: list[tuple[int, int]] = []
    while len(centres) < count:
        x, y = (rng.randint(RADIUS + 8, IMAGE_SIZE - RADIUS - 8) for _ in range(2))
        if all((x - a) ** 2 + (y - b) ** 2 > (2 * RADIUS + 8) ** 2 for a, b in centres):
            centres.append((x, y))
    return Scene(colour, count, tuple(centres))


def draw(scene: Scene) -> Image.Image:
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    canvas = ImageDraw.Draw(image)
    for x, y in scene.centres:
        canvas.ellipse([x - RADIUS, y - RADIUS, x + RADIUS, y + RADIUS], fill=COLOURS[scene.colour])
    return image


def trajectory(kind: str, colour: str, count: int, checks: int = 0) -> str:
    """The reasoner's target: a slow-thinking trajectory answering from a description.

    ``checks`` (0-2) re-reads of the description make trajectories of the same question differ in
    length, so that Keep-1 ("the shortest correct one") has something to choose.
    """
    noun = "circle" if count == 1 else "circles"
    seen = f"I see {COUNT_WORDS[count]} {colour} {noun}."
    if kind == "colour":
        steps = [f"The question asks for the colour, so it is {colour}."]
        steps += [f"Let me look again: the {noun} {'is' if count == 1 else 'are'} {colour}."] * checks
        return f"<think>{seen} {' '.join(steps)}</think> The shapes are {colour}. \\boxed{{{colour}}}"
    steps = [f"Counting them gives {count}."]
    steps += [f"Let me count again: {', '.join(COUNT_WORDS[i] for i in range(1, count + 1))}."] * checks
    return f"<think>{seen} {' '.join(steps)}</think> There are {count} {noun}. \\boxed{{{count}}}"


def _write_jsonl(path: Path, rows: list[dict]) -> int:
    path.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows), encoding="utf-8")
    return len(rows)


def _scenes(directory: Path, prefix: str, count: int, seed: int) -> list[tuple[str, Scene]]:
    """``count`` scenes drawn to ``directory/images/PREFIX-i.png``; returns (relative path, scene)."""
    rng = random.Random(seed)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    out = []
    for index in range(count):
        scene = random_scene(rng)
        relative = f"images/{prefix}-{index:04d}.png"
        draw(scene).save(directory / relative, format="PNG")
        out.append((relative, scene))
    return out


def rollout_rows(scenes: list[tuple[str, Scene]], prefix: str = "q") -> list[dict]:
    rows = []
    for index, (image, scene) in enumerate(scenes):
        kind = ("colour", "count")[index % 2]
        rows.append({"id": f"{prefix}{index:04d}-{kind}", "image": image, "question": QUESTIONS[kind],
                     "answer": scene.answer(kind), "source": SOURCE, "difficulty": DIFFICULTY[kind]})
    return rows


def reasoner_rows(count: int, seed: int) -> list[dict]:
    """Text records (description, question -> trajectory); the answer follows the description."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        colour, number = rng.choice(sorted(COLOURS)), rng.randint(1, 3)
        kind = rng.choice(sorted(QUESTIONS))
        rows.append({"id": f"r{index:05d}", "caption": describe(colour, number), "question": QUESTIONS[kind],
                     "response": trajectory(kind, colour, number, checks=rng.choice((0, 0, 1, 2)))})
    return rows


def text_mix_rows(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        response = f"<think>{a} + {b} = {a + b}.</think> The sum is {a + b}. \\boxed{{{a + b}}}"
        rows.append({"id": f"t{index:04d}", "question": f"What is {a} + {b}?", "source": "demo/arithmetic",
                     "response": response})
    return rows


def write_task(directory: str | Path, *, images: int, warmup_images: int, reasoner_samples: int,
               mix_samples: int, caption_prompt: str, eval_images: int = 0, seed: int = 0) -> dict:
    """Write every file of the task under ``directory``; returns counts and the file paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rollout = _scenes(directory, "rollout", images, seed)
    warmup = _scenes(directory, "warmup", warmup_images, seed + 1)
    held_out = _scenes(directory, "eval", eval_images, seed + 4)
    files = {name: directory / f"{name}.jsonl" for name in
             ("rollout_inputs", "captioner_sft", "reasoner_sft", "mix_text", "mix_vqa", "eval_inputs")}
    vqa = [{"id": f"w{index:04d}", "image": image, "question": caption_prompt, "response": scene.description,
            "source": "demo/descriptions"} for index, (image, scene) in enumerate(warmup)]
    counts = {
        "rollout_inputs": _write_jsonl(files["rollout_inputs"], rollout_rows(rollout)),
        "captioner_sft": _write_jsonl(files["captioner_sft"], vqa),
        "reasoner_sft": _write_jsonl(files["reasoner_sft"], reasoner_rows(reasoner_samples, seed + 2)),
        "mix_text": _write_jsonl(files["mix_text"], text_mix_rows(mix_samples, seed + 3)),
        "mix_vqa": _write_jsonl(files["mix_vqa"], vqa[:mix_samples]),
        "eval_inputs": _write_jsonl(files["eval_inputs"], rollout_rows(held_out, prefix="e")),
    }
    colours = sorted(scene.colour for _, scene in rollout)
    return {"images": images, "warmup_images": warmup_images, "rows": counts,
            "files": {name: str(path) for name, path in files.items()},
            "colour_counts": {colour: colours.count(colour) for colour in sorted(set(colours))}}


def states_answer(caption: str, answer: str) -> bool:
    """Whether ``caption`` states the gold ``answer`` the way a description does ("two", "red")."""
    words = re.findall(r"[a-z]+", caption.lower())
    wanted = COUNT_WORDS.get(int(answer)) if answer.isdigit() else answer.lower()
    others = ({COUNT_WORDS[n] for n in COUNT_WORDS} if answer.isdigit() else set(COLOURS)) - {wanted}
    return wanted in words and not others & set(words)
