"""The README's shell examples, for the tests that run them as written."""

from __future__ import annotations

import re

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def bash_block(heading: str) -> list[str]:
    """The commands of the first ```bash block after `heading` (comments and blank lines dropped)."""
    start = README.index(heading)
    block = re.search(r"```bash\n(.*?)```", README[start:], re.S)
    assert block is not None, f"no bash block under {heading!r}"
    commands = []
    for line in block.group(1).splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            commands.append(line)
    return commands
