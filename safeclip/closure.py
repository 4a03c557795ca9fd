"""Each DVC stage's import closure inside the repo, from the source alone (ast), to check `dvc.yaml`'s deps.

    python -m safeclip.closure               # print every stage's closure, as dvc.yaml should list it

A stage runs `python -m X` (or `python -m safeclip.launch X`): its closure is every repo module that X imports,
at module level or inside a function (lazy imports run too), and so on transitively, plus every package
`__init__.py` on the way (importing `a.b.c` runs `a/__init__.py` and `a/b/__init__.py`).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("safeclip", "stages")


def module_file(module: str, root: Path = ROOT) -> Path | None:
    """The repo file of a dotted module name (a package's __init__.py), or None outside the repo."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*module.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Dotted names a file imports (absolute and relative; `from a import b` counts `a` and `a.b`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = _module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def closure(modules: list[str], root: Path = ROOT) -> set[Path]:
    """Every repo file that running these modules imports, package __init__ files included."""
    todo = list(modules)
    seen: set[Path] = set()
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # the packages on the way, then the module itself
            f = module_file(".".join(parts[:i]), root)
            if f is not None and f not in seen:
                seen.add(f)
                todo.extend(imported_modules(f, root))
    return seen


def stage_modules(cmd: str) -> list[str]:
    """The modules a stage's `python -m ...` command runs (the launcher and the stage it launches)."""
    words = cmd.split()
    if "-m" not in words:
        raise ValueError(f"not a `python -m` command: {cmd!r}")
    mods = [words[words.index("-m") + 1]]
    if mods[0] == "safeclip.launch":
        mods.append(words[words.index("-m") + 2])
    return mods


def stage_commands(root: Path = ROOT) -> dict[str, str]:
    """Stage name (matrix stages once, by their template name) -> command, from dvc.yaml."""
    import yaml

    spec = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    return {name: s["cmd"] for name, s in spec.items()}


def main() -> None:
    for name, cmd in stage_commands().items():
        files = sorted(str(p.relative_to(ROOT)) for p in closure(stage_modules(cmd)))
        print(f"{name}:")
        print("\n".join(f"  - {f}" for f in files))


if __name__ == "__main__":
    sys.exit(main())
