"""Protocol modules stay sans-I/O: no asyncio or socket imports (architecture habit 1)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "bridge"
SANS_IO = [
    *sorted(p for p in (ROOT / "sip").glob("*.py") if p.name != "transport.py"),
    ROOT / "rtp" / "packet.py",
    ROOT / "rtp" / "session.py",
    ROOT / "rtp" / "playout.py",
    ROOT / "pbx" / "esl" / "protocol.py",
]


@pytest.mark.parametrize("path", [p for p in SANS_IO if p.exists()], ids=lambda p: str(p.relative_to(ROOT)))
def test_protocol_module_does_no_io(path):
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncio", "socket", "selectors", "time"}, imported
