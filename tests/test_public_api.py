"""The product packages use only public API of their dependencies: no underscore module,
no underscore name imported from one, no underscore attribute read off an imported module."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ("model", "training", "service", "cli")
PRIVATE_MODULES = ("uvicorn.protocols", "prometheus_client.values", "prometheus_client.metrics")


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def third_party(module: str) -> bool:
    return module.split(".")[0] not in PRODUCT


def violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules: set[str] = set()  # local names bound to third-party modules
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if third_party(alias.name):
                    modules.add(alias.asname or alias.name.split(".")[0])
                    if any(is_private(part) for part in alias.name.split(".")):
                        found.append(f"{path}:{node.lineno} imports {alias.name}")
                    if alias.name.startswith(PRIVATE_MODULES):
                        found.append(f"{path}:{node.lineno} imports {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and third_party(node.module):
            private_module = any(is_private(part) for part in node.module.split("."))
            if private_module or node.module.startswith(PRIVATE_MODULES):
                found.append(f"{path}:{node.lineno} imports from {node.module}")
            for alias in node.names:
                if is_private(alias.name):
                    found.append(f"{path}:{node.lineno} imports {node.module}.{alias.name}")
                else:
                    modules.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in modules:
                found.append(f"{path}:{node.lineno} reads {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("package", PRODUCT)
def test_no_private_api_of_a_dependency_is_used(package: str) -> None:
    found = [v for path in sorted((REPO / package).rglob("*.py")) for v in violations(path)]
    assert found == []


def test_the_check_catches_what_it_forbids(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import torch\n"
        "from uvicorn.protocols.http.httptools_impl import RequestResponseCycle\n"
        "from prometheus_client import _private\n"
        "torch._C._set_mkldnn_enabled(False)\n"
        "def f(p: torch.nn.Parameter) -> int:\n"
        "    return p.data.shape[0]\n"
    )
    found = violations(sample)
    assert {int(v.split(":")[1].split()[0]) for v in found} == {2, 3, 4}  # the lines, not line 6
