"""Write params.yaml from conf/ (the same Hydra composition `dvc exp run` does), for a profile and overrides.

    python -m safeclip.profiles                 # the committed world default
    python -m safeclip.profiles profile=paper   # make the paper profile the workspace default for `dvc repro`
    python -m safeclip.profiles profile=paper @examples/paper-1gpu.overrides   # + the overrides in a file
    python -m safeclip.profiles --inputs        # re-derive the `inputs` section of a hand-edited params.yaml

The composition also derives params.yaml's `inputs` section (what dvc.yaml's ${inputs.<stage>.<param>} deps
hash, see safeclip/inputs.py) through the `${safeclip_inputs:}` resolver registered here. Stages never import
this module: the resolver's code is not a dependency of every stage.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def warn_missing(params) -> None:
    """At composition, before any stage: DVC itself would stop at a missing dependency naming only its path."""
    from safeclip.inputs import missing

    for line in missing(params):
        print(f"warning: {line}", file=sys.stderr)


def resolve_inputs(*, _root_):
    """The OmegaConf resolver behind `inputs: ${safeclip_inputs:}` in conf/config.yaml: the composed params,
    less the section itself, validated, then derived (as a DictConfig: `OmegaConf.resolve`, which DVC's
    composition calls, puts a container in place of the interpolation but refuses a plain dict there)."""
    from omegaconf import OmegaConf

    from safeclip.inputs import derive
    from safeclip.params import Params

    raw = OmegaConf.to_container(_root_, resolve=False)
    raw.pop("inputs", None)
    params = Params.model_validate(OmegaConf.to_container(OmegaConf.create(raw), resolve=True))
    warn_missing(params)
    return OmegaConf.create(derive(params))


def register_resolver() -> None:
    """`${safeclip_inputs:}` for OmegaConf: the Hydra plugin in conf/hydra_plugins/ calls this when DVC composes,
    and `compose` does (Hydra scans its plugin path once per process, so that cannot be relied on twice)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("safeclip_inputs", resolve_inputs, replace=True)


def compose(output: str | Path, overrides: list[str], root: str | Path = ".") -> None:
    from dvc.utils.hydra import compose_and_dump

    register_resolver()
    root = Path(root).resolve()
    # plugins from conf/hydra_plugins/, as `dvc exp run` loads them (hydra.plugins_path in .dvc/config)
    compose_and_dump(str(output), str(root / "conf"), None, "config", str(root / "conf"), overrides)


def rederive_inputs(path: str | Path = "params.yaml") -> None:
    """Re-derive the `inputs` section of a params.yaml in place, after editing it by hand."""
    import yaml

    from safeclip.inputs import derive
    from safeclip.io import write_text
    from safeclip.params import load_params

    params = load_params(path)  # its errors name the key and line
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    raw["inputs"] = derive(params)
    write_text(path, yaml.safe_dump(raw, sort_keys=False))
    warn_missing(params)


def expand(args: list[str]) -> list[str]:
    """`@FILE` stands for the overrides in FILE, one per line (blank lines and `#` comment lines skipped), e.g.
    `profile=paper @examples/paper-1gpu.overrides base.scale=0.1`: later overrides win."""
    out: list[str] = []
    for a in args:
        if a.startswith("@"):
            lines = Path(a[1:]).read_text(encoding="utf-8").splitlines()
            out += [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]
        else:
            out.append(a)
    return out


def main() -> None:
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__)
        return
    unknown = [a for a in sys.argv[1:] if a.startswith("-") and a != "--inputs"]
    if unknown:  # Hydra would read it as a malformed override and print a lexer traceback
        sys.exit(f"safeclip.profiles: unknown option {unknown[0]} (overrides are key=value; see --help)")
    if sys.argv[1:2] == ["--inputs"]:
        rederive_inputs(sys.argv[2] if len(sys.argv) > 2 else Path(os.getcwd()) / "params.yaml")
        return
    compose(Path(os.getcwd()) / "params.yaml", expand(sys.argv[1:]))


if __name__ == "__main__":
    main()
