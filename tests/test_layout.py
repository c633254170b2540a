"""The architecture's lines, read from the import statements.

Protocol modules stay sans-I/O: no asyncio or socket imports (architecture habit 1). Codecs know nothing of
vendors; one ingress never imports another (bridge/sip and bridge/pbx); the agent interface knows none of its
implementations (bridge/vendors/base.py imports no sibling vendor module).
"""

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
    ROOT / "pbx" / "audiosocket" / "protocol.py",
    ROOT / "pbx" / "websocket" / "protocol.py",
]


def imports(path: Path) -> set[str]:
    """Every module `path` imports, by its full dotted name (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from bridge import vendors`
    return found


def crossings(modules: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    """`file: module` for every import in `modules` of a module under one of the `forbidden` packages."""
    return [f"{path.relative_to(ROOT.parent)}: {name}" for path in modules for name in sorted(imports(path))
            if any(name == f or name.startswith(f + ".") for f in forbidden)]


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_codecs_know_nothing_of_vendors():
    assert crossings(modules("codec"), ("bridge.vendors",)) == []


def test_the_sip_ingress_imports_nothing_from_the_pbx_ingresses():
    assert crossings(modules("sip"), ("bridge.pbx",)) == []


def test_the_pbx_ingresses_import_nothing_from_the_sip_ingress():
    assert crossings(modules("pbx"), ("bridge.sip",)) == []


def test_the_pbx_ingresses_do_not_import_each_other():
    ingresses = sorted(p.name for p in (ROOT / "pbx").iterdir() if (p / "__init__.py").exists())
    assert {"ari", "esl", "audiosocket", "websocket"} <= set(ingresses)
    for name in ingresses:
        others = tuple(f"bridge.pbx.{other}" for other in ingresses if other != name)
        assert crossings(modules(f"pbx/{name}"), others) == []


def test_the_agent_interface_imports_no_vendor():
    siblings = tuple(f"bridge.vendors.{p.stem}" for p in modules("vendors") if p.stem not in ("base", "__init__"))
    assert siblings  # the vendors are there to be kept out
    assert crossings([ROOT / "vendors" / "base.py"], siblings) == []


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


def test_no_ingress_or_vendor_knows_the_operations_side():
    """Records, webhooks and metrics subscribe to the core's call events; ingresses and vendors never see them."""
    assert crossings(modules("sip") + modules("pbx") + modules("vendors") + modules("rtp"), ("bridge.ops",)) == []


def test_the_core_knows_only_the_event_stream_of_ops():
    names = {line.split(": ")[1] for line in crossings([ROOT / "call.py"], ("bridge.ops",))}
    assert names == {"bridge.ops", "bridge.ops.events"}  # `from bridge.ops import events`
