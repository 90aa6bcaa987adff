"""Config YAML read with YAML 1.2's booleans: only true/false, so `train.amp=off` stays "off".

PyYAML follows YAML 1.1, where on/off/yes/no/y/n are booleans too; a string setting whose value
is one of those words (`amp: off`) then arrived as False and was refused as "expected str". Every
reader of run configs goes through `load_yaml`; a boolean setting still accepts those words
(`config._as_bool`), so nothing written for YAML 1.1 stops working.
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader whose bool resolver knows only true/false (any case)."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(text: str) -> Any:
    """`text` as YAML with YAML 1.2's booleans; no Python objects are ever built (safe)."""
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass
