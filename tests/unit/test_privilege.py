"""Least privilege, checked on the source: kvmhooks runs no subprocess and no shell."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "kvmhooks"
FORBIDDEN_CALLS = {"system", "popen", "Popen", "run", "call", "check_call", "check_output",
                   "spawnl", "spawnv", "execv", "execvp", "execl", "execlp"}


def test_the_package_runs_no_subprocess_and_no_shell():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [alias.name for alias in node.names]
                module = getattr(node, "module", None) or ""
                if "subprocess" in names or module == "subprocess" or "pty" in names:
                    found.append(f"{path.name}:{node.lineno} imports subprocess")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    isinstance(node.func.value, ast.Name) and node.func.value.id == "os" and \
                    node.func.attr in FORBIDDEN_CALLS:
                found.append(f"{path.name}:{node.lineno} os.{node.func.attr}")
            if isinstance(node, ast.keyword) and node.arg == "shell":
                found.append(f"{path.name}:{node.value.lineno} shell=")
    assert found == []
