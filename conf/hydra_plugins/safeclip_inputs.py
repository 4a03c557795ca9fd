"""Registers `${safeclip_inputs:}`, the resolver conf/config.yaml derives params.yaml's `inputs` section with.

Hydra imports every module of the `hydra_plugins` package on its plugin path when DVC composes params.yaml
(`dvc exp run`, with `hydra.plugins_path = conf` in .dvc/config).
"""

from safeclip.profiles import register_resolver

register_resolver()
