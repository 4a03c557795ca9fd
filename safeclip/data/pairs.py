"""Curated safe->unsafe pairs: JSONL in git, validated line by line, split deterministically.

Nothing is silently dropped: every problem is reported as `file:line: field: what is wrong` and any bad row
fails the stage, because a curated set of ~100 pairs has no row to spare.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from safeclip.io import InputError
from safeclip.world.catalogue import VISU_CONCEPTS

FIELDS = ("safe", "unsafe", "tag")


@dataclass(frozen=True)
class Pair:
    safe: str
    unsafe: str
    tag: str
    line: int


def _norm(text: str) -> str:
    return " ".join(text.casefold().split()).rstrip(".")


def read_pairs(path: str | Path, concepts: tuple[str, ...] = VISU_CONCEPTS) -> list[Pair]:
    """Parse and validate; raise InputError listing every problem found."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file does not exist")
    if not path.is_file():
        raise InputError(f"{path}: is a folder, not a JSONL file (ingest.pairs_file)")
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # e.g. PowerShell's `>`: every line would fail alike
        raise InputError(f"{path}:1: -: the file is UTF-16 encoded; save it as UTF-8")
    if data.startswith(b"\xef\xbb\xbf"):  # "UTF-8 with BOM", as some editors save it: harmless, dropped
        data = data[3:]
    problems: list[str] = []
    pairs: list[Pair] = []
    seen: dict[tuple[str, str], int] = {}
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for lineno, raw in enumerate(lines, start=1):
        where = f"{path}:{lineno}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.append(f"{where}: -: not valid UTF-8 (byte {e.start}); save the file as UTF-8")
            continue
        if not text.strip():
            problems.append(f"{where}: -: empty line")
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            problems.append(f"{where}: -: not valid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(obj, dict):
            problems.append(f"{where}: -: expected a JSON object {{safe, unsafe, tag}}, got {type(obj).__name__}")
            continue
        bad = False
        for key in sorted(set(obj) - set(FIELDS)):
            problems.append(f"{where}: {key}: unknown field (expected {', '.join(FIELDS)})")
            bad = True
        for key in FIELDS:
            if key not in obj:
                problems.append(f"{where}: {key}: missing")
                bad = True
            elif not isinstance(obj[key], str):
                problems.append(f"{where}: {key}: must be a string, got {type(obj[key]).__name__}")
                bad = True
            elif not obj[key].strip():
                problems.append(f"{where}: {key}: empty")
                bad = True
        if bad:
            continue
        if obj["tag"] not in concepts:
            problems.append(f"{where}: tag: {obj['tag']!r} is not a known concept ({', '.join(concepts)})")
            continue
        if _norm(obj["safe"]) == _norm(obj["unsafe"]):
            problems.append(f"{where}: unsafe: identical to safe")
            continue
        key = (_norm(obj["safe"]), _norm(obj["unsafe"]))
        if key in seen:
            problems.append(f"{where}: safe: duplicate of line {seen[key]}")
            continue
        seen[key] = lineno
        pairs.append(Pair(obj["safe"].strip(), obj["unsafe"].strip(), obj["tag"], lineno))
    if not pairs and not problems:
        problems.append(f"{path}: -: no pairs (the file is empty)")
    if problems:
        shown = problems[:50] + ([f"... and {len(problems) - 50} more"] if len(problems) > 50 else [])
        raise InputError(f"{len(problems)} problem(s) in curated pairs:\n" + "\n".join(shown))
    return pairs


def pair_id(pair: Pair) -> str:
    return hashlib.sha1(f"{_norm(pair.safe)}\t{_norm(pair.unsafe)}".encode()).hexdigest()[:16]


def split_pairs(pairs: list[Pair], val_fraction: float, seed: int) -> dict[str, list[Pair]]:
    """Split by a seeded hash of the safe caption: stable when rows are added, no safe text in both splits."""
    n_val = max(1, round(len(pairs) * val_fraction))
    def rank(p: Pair) -> str:
        return hashlib.sha1(f"{seed}:{_norm(p.safe)}".encode()).hexdigest()
    safes = sorted({_norm(p.safe) for p in pairs}, key=lambda s: hashlib.sha1(f"{seed}:{s}".encode()).hexdigest())
    val_safes = set()
    count = 0
    for s in safes:
        if count >= n_val:
            break
        val_safes.add(s)
        count += sum(_norm(p.safe) == s for p in pairs)
    out = {"train": [], "val": []}
    for p in sorted(pairs, key=rank):
        out["val" if _norm(p.safe) in val_safes else "train"].append(p)
    return out


def tag_counts(pairs: list[Pair]) -> Counter:
    return Counter(p.tag for p in pairs)
