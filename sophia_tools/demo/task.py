"""The demo's synthetic image task, generated on the fly: coloured circles, two kinds of questions.

What: every image is a 448 x 448 light-gray canvas (one InternVL tile) with 1-3 circles of one
colour. A scene's *true description* (what a perfect captioner would write) is
``"The image shows two red circles on a light gray background."``; its questions are

* ``colour`` (difficulty ``easy``): "What colour are the shapes in the image?" -> ``red``;
* ``count`` (difficulty ``hard``): "How many circles are there in the image?" -> ``2``.

Why these attributes: the policy's vision tower and projector are frozen *random* weights (only
the language model learns), so a question must hinge on what a random ViT still separates.
A linear probe on its mean-pooled tile features (240 scenes, 25 % held out) separated the
colour and the number of circles perfectly, but left or right placement only at chance level;
so colour and count are asked, never position or shape.

Why each ingredient of SOPHIA's selection can matter here, by construction:

* **Caption reward.** A share ``vague_share`` of the captioner's warm-up descriptions leave one
  attribute out ("some red shapes", "two circles"), so the sampled captions sometimes do too. From
  such a caption the reasoner cannot know the answer: it writes a short *guess* trajectory with a
  random answer, right by luck 1 time in 3 (count) or 4 (colour). A lucky guess is a correct
  trajectory that teaches the policy to guess; its caption's reward (mean over N guesses) is low,
  so α filters it out, and ``no_caption_reward`` lets it in. Guesses are short in words (in the tiny
  tokenizer's tokens about as long as a clean trajectory), so the shortest rule does not keep them out.
* **Shortest.** A share ``detour_share`` of the reasoner's trajectories from an informative
  description take a detour: a wrong intermediate value, then a re-check that recovers the right
  answer (half of them) or keeps the wrong one. Detours are longer, so among correct trajectories
  the shortest is a clean one, and long trajectories are the ones with detours and errors;
  ``no_shortest`` trains on recovered detours as often as they occur.

Files written by :func:`write_task` (all JSONL, image paths relative to the file):

* ``rollout_inputs.jsonl`` — the SOPHIA questions (id, image, question, answer, source,
  difficulty, category = the question type), one question per image, alternating colour / count;
* ``captioner_sft.jsonl`` — warm-up VQA records on *other* images: the caption prompt -> the
  scene's description (true, or vague in one attribute);
* ``reasoner_sft.jsonl`` — text warm-up records for the reasoning LLM: a description + a question
  -> a short ``<think>`` trajectory ending in ``\\boxed{}`` that answers what the description says
  (clean or with a detour), or guesses when the description does not say;
* ``mix_text.jsonl`` / ``mix_vqa.jsonl`` — the text-only and VQA samples mixed into the SOPHIA
  update (arithmetic with ``<think>``; image description on warm-up images);
* ``eval_inputs.jsonl`` — held-out questions on yet other images (same columns; also ``sophia-eval``'s
  generic ``jsonl`` benchmark format), which the policy answers itself before and after the update.

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
KIND_OF_DIFFICULTY = {difficulty: kind for kind, difficulty in DIFFICULTY.items()}
OMITTED = "omitted"  # what a description says about an attribute it leaves out


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


def describe(colour: str | None, count: int | None) -> str:
    """A description of a scene; ``None`` leaves that attribute out (a vague caption)."""
    return f"The image shows {_objects(colour, count)} on a light gray background."


def _objects(colour: str | None, count: int | None) -> str:
    """"two red circles", or with an attribute left out "some red shapes" / "two circles"."""
    if count is None:
        return f"some {colour} shapes"
    noun = "circle" if count == 1 else "circles"
    return f"{COUNT_WORDS[count]} {noun}" if colour is None else f"{COUNT_WORDS[count]} {colour} {noun}"


def vague(colour: str, count: int, rng: random.Random) -> str:
    """A description that leaves the count or the colour out (one of the two at random)."""
    return describe(colour, None) if rng.random() < 0.5 else describe(None, count)


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


def _value_word(kind: str, value: str) -> str:
    return value if kind == "colour" else COUNT_WORDS[int(value)]


def trajectory(kind: str, colour: str | None, count: int | None, detour: str | None = None,
               recovered: bool = True, guess: str | None = None) -> str:
    """The reasoner's target: a slow-thinking trajectory answering from a description.

    From a description that states the asked attribute: a clean trajectory, or (``detour`` = a wrong
    value) one that first claims the wrong value, then re-checks and ends right (``recovered``) or
    wrong. From one that leaves it out (``colour`` or ``count`` is None): a short guess, ``guess``.
    """
    seen = f"I see {_objects(colour, count)}."
    if (kind == "colour" and colour is None) or (kind == "count" and count is None):
        cannot = "I cannot count them." if kind == "count" else "I cannot tell the colour."
        return f"<think>{seen} {cannot}</think> I guess \\boxed{{{guess}}}"
    truth = colour if kind == "colour" else str(count)
    final = truth if detour is None or recovered else detour
    if kind == "colour":
        again = "let me look again at the shapes:"
        steps = [f"The colour looks {detour}.", f"Wait, {again}" if recovered else again.capitalize(),
                 f"they are {final}."] if detour else [f"The colour is {colour}."]
        return f"<think>{seen} {' '.join(steps)}</think> The shapes are {final}. \\boxed{{{final}}}"
    if detour:
        recount = ", ".join(COUNT_WORDS[i] for i in range(1, int(final) + 1))
        steps = [f"Counting them gives {detour}.", "Wait, let me count again:" if recovered else "Let me count again:",
                 f"{recount}. So it is {final}."]
    else:
        steps = [f"Counting them gives {count}."]
    final_noun = "circle" if final == "1" else "circles"
    return f"<think>{seen} {' '.join(steps)}</think> There {'is' if final == '1' else 'are'} {final} {final_noun}. " \
           f"\\boxed{{{final}}}"


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
                     "answer": scene.answer(kind), "source": SOURCE, "difficulty": DIFFICULTY[kind],
                     "category": kind})
    return rows


def _wrong_value(kind: str, truth: str, rng: random.Random) -> str:
    values = sorted(COLOURS) if kind == "colour" else ["1", "2", "3"]
    return rng.choice([value for value in values if value != truth])


def reasoner_rows(count: int, seed: int, vague_share: float = 0.0, detour_share: float = 0.0) -> list[dict]:
    """Text records (description, question -> trajectory): answers follow the description, or guess."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        colour, number = rng.choice(sorted(COLOURS)), rng.randint(1, 3)
        kind = rng.choice(sorted(QUESTIONS))
        said_colour, said_count = colour, number
        if rng.random() < vague_share:
            said_colour, said_count = (colour, None) if rng.random() < 0.5 else (None, number)
        truth = colour if kind == "colour" else str(number)
        guess = rng.choice(sorted(COLOURS) if kind == "colour" else ["1", "2", "3"])
        detour = _wrong_value(kind, truth, rng) if rng.random() < detour_share else None
        recovered = rng.random() < 0.5
        rows.append({"id": f"r{index:05d}", "caption": describe(said_colour, said_count),
                     "question": QUESTIONS[kind],
                     "response": trajectory(kind, said_colour, said_count, detour, recovered, guess)})
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
               mix_samples: int, caption_prompt: str, eval_images: int = 0, seed: int = 0,
               vague_share: float = 0.0, detour_share: float = 0.0) -> dict:
    """Write every file of the task under ``directory``; returns counts and the file paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rollout = _scenes(directory, "rollout", images, seed)
    warmup = _scenes(directory, "warmup", warmup_images, seed + 1)
    held_out = _scenes(directory, "eval", eval_images, seed + 4)
    files = {name: directory / f"{name}.jsonl" for name in
             ("rollout_inputs", "captioner_sft", "reasoner_sft", "mix_text", "mix_vqa", "eval_inputs")}
    rng = random.Random(seed + 5)
    said = [vague(scene.colour, scene.count, rng) if rng.random() < vague_share else scene.description
            for _, scene in warmup]
    vqa = [{"id": f"w{index:04d}", "image": image, "question": caption_prompt, "response": text,
            "source": "demo/descriptions"} for index, ((image, _), text) in enumerate(zip(warmup, said, strict=True))]
    counts = {
        "rollout_inputs": _write_jsonl(files["rollout_inputs"], rollout_rows(rollout)),
        "captioner_sft": _write_jsonl(files["captioner_sft"], vqa),
        "reasoner_sft": _write_jsonl(files["reasoner_sft"], reasoner_rows(reasoner_samples, seed + 2,
                                                                          vague_share, detour_share)),
        "mix_text": _write_jsonl(files["mix_text"], text_mix_rows(mix_samples, seed + 3)),
        "mix_vqa": _write_jsonl(files["mix_vqa"], [row for row, (_, scene) in zip(vqa, warmup, strict=True)
                                                   if row["response"] == scene.description][:mix_samples]),
        "eval_inputs": _write_jsonl(files["eval_inputs"], rollout_rows(held_out, prefix="e")),
    }
    colours = sorted(scene.colour for _, scene in rollout)
    return {"images": images, "warmup_images": warmup_images, "rows": counts,
            "vague_descriptions": sum(text != scene.description for (_, scene), text in zip(warmup, said, strict=True)),
            "files": {name: str(path) for name, path in files.items()},
            "colour_counts": {colour: colours.count(colour) for colour in sorted(set(colours))}}


def stated_value(caption: str, kind: str) -> str | None:
    """The value a caption states for the attribute ``kind`` ("2", "red"), ``OMITTED`` if it states
    none, ``None`` if it states several (contradicting itself)."""
    words = set(re.findall(r"[a-z]+", caption.lower()))
    if kind == "count":
        found = [str(number) for number, word in COUNT_WORDS.items() if word in words]
    else:
        found = [colour for colour in COLOURS if colour in words]
    return OMITTED if not found else found[0] if len(found) == 1 else None


def states_answer(caption: str, answer: str) -> bool:
    """Whether ``caption`` states the gold ``answer`` the way a description does ("two", "red")."""
    return stated_value(caption, "count" if answer.isdigit() else "colour") == answer.lower()


def caption_class(caption: str, answer: str) -> str:
    """``right`` (states the gold answer), ``vague`` (leaves the attribute out) or ``wrong``."""
    value = stated_value(caption, "count" if answer.isdigit() else "colour")
    return "right" if value == answer.lower() else "vague" if value == OMITTED else "wrong"
