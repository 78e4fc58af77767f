"""``sophia-rollout check --in FILE.jsonl [--timeout S] [--workers W]``: verify answers from a file.

Each non-blank input line is a JSON object ``{"response": str | null, "answer": str | number}``
(optionally ``"choices"``: a list, A first, or a letter → text object; ``"truncated"``: bool). One
JSON line is printed per input line, in order: ``{"correct": bool, "extracted": str | null,
"reason": str}`` (the reasons are listed in docs/VERIFIER.md). The whole file is validated before anything is verified, so a malformed line
stops the command with ``error: FILE:LINE: …`` on stderr and exit code 2 and no partial output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rollout.verifier.pool import DEFAULT_TIMEOUT_S, VerifierPool
from sophia_common.cli import UserError


def _check_line(path: Path, line_number: int, text: str) -> dict:
    where = f"{path}:{line_number}"
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise UserError(
            f"{where}: expected a JSON object with 'response' and 'answer', got {type(row).__name__}"
        )
    missing = [key for key in ("response", "answer") if key not in row]
    if missing:
        raise UserError(f"{where}: missing key(s) {', '.join(repr(key) for key in missing)}")
    if row["response"] is not None and not isinstance(row["response"], str):
        raise UserError(f"{where}: 'response' must be a string or null, got {type(row['response']).__name__}")
    answer = row["answer"]
    if isinstance(answer, bool) or not isinstance(answer, str | int | float):
        raise UserError(f"{where}: 'answer' must be a string or a number, got {type(answer).__name__}")
    choices = row.get("choices")
    if choices is not None and not isinstance(choices, list | dict):
        raise UserError(f"{where}: 'choices' must be a list or an object, got {type(choices).__name__}")
    return {
        "response": row["response"],
        "answer": str(answer),
        "choices": choices,
        "truncated": row.get("truncated"),
    }


def read_check_file(path: Path) -> list[dict]:
    """The validated rows of a check file; ``UserError`` naming the file and line on any problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read ({exc})") from None
    return [
        _check_line(path, number, line)
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]


def check_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sophia-rollout check", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--in", dest="input", required=True, type=Path, help="JSONL file of {response, answer}"
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per check (hard limit)"
    )
    parser.add_argument("--workers", type=int, default=1, help="verification worker processes")
    args = parser.parse_args(argv)
    if args.timeout <= 0 or args.workers < 1:
        raise UserError(f"--timeout must be > 0 and --workers >= 1, got {args.timeout} and {args.workers}")
    rows = read_check_file(args.input)
    with VerifierPool(workers=args.workers, timeout_s=args.timeout) as pool:
        results = pool.verify_batch(rows)
    for result in results:
        sys.stdout.write(json.dumps(result.to_json(), ensure_ascii=False) + "\n")
    sys.stdout.flush()
    return 0
