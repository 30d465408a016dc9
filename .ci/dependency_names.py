"""Print the names of pyproject.toml's dependencies (with the dev extra) without their version ranges.

`make test-latest` installs these with `pip install --upgrade`, so every one comes at its newest release,
whatever bounds or exclusions pyproject.toml and the lock set. torch is left out: it is installed first as
the local CPU build.
"""

import re
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
requirements = project["dependencies"] + project["optional-dependencies"]["dev"]
names = [re.match(r"[A-Za-z0-9._-]+", r).group(0) for r in requirements]
print(" ".join(n for n in names if n.lower() != "torch"))
