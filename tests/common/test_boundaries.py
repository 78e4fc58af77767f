"""The house rules of docs/ARCHITECTURE.md, enforced: one-way dependencies and light package imports."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.multirank import REPO, subprocess_env

FORBIDDEN = {
    "rollout": ("megatron", "transformer_engine", "sophia_megatron", "conversion", "sophia_tools"),
    "evaluation": ("megatron", "transformer_engine", "sophia_megatron", "conversion", "sophia_tools"),
    "sophia_megatron": ("vllm", "rollout", "sophia_tools"),
    "conversion": ("vllm", "rollout", "sophia_megatron", "sophia_tools"),
    "sophia_common": ("vllm", "megatron", "transformer_engine", "sophia_megatron", "rollout", "conversion",
                      "sophia_tools"),
}


MODULE_FUNCTION = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Imports, ``"module:function"`` strings and ``-m module`` subprocess targets of one file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_FUNCTION.match(node.value):
            found.append((node.lineno, node.value.split(":")[0]))
        elif isinstance(node, ast.List | ast.Tuple):
            items = node.elts
            for flag, target in zip(items, items[1:]):
                if (isinstance(flag, ast.Constant) and flag.value == "-m" and isinstance(target, ast.Constant)
                        and isinstance(target.value, str)):
                    found.append((node.lineno, target.value))
    return found


def test_scanner_sees_string_targets(tmp_path):
    """The scanner itself: a ``"pkg.mod:func"`` string and a ``-m pkg.mod`` argument count as imports."""
    probe = tmp_path / "probe.py"
    probe.write_text('TABLE = {"x": ("sophia_megatron.verify:main", "help")}\n'
                     'CMD = [sys.executable, "-m", "rollout.pipeline", "run"]\n')
    assert {module for _, module in imported_modules(probe)} == {"sophia_megatron.verify", "rollout.pipeline"}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_never_imports_forbidden(package):
    violations = []
    for path in sorted((REPO / package).rglob("*.py")):
        for lineno, module in imported_modules(path):
            if module.split(".")[0] in FORBIDDEN[package]:
                violations.append(f"{path.relative_to(REPO)}:{lineno} imports {module}")
    assert not violations, "\n".join(violations)


def test_package_imports_are_light():
    code = (
        "import sys, json\n"
        "import sophia_common, sophia_megatron, conversion, rollout, sophia_tools\n"
        "import sophia_tools.train_cli, sophia_tools.convert_cli, sophia_tools.rollout_cli, sophia_tools.profile_cli\n"
        "heavy = ('torch', 'megatron', 'vllm', 'transformer_engine', 'transformers')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(), capture_output=True,
                         text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_console_scripts_declared():
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) >= {"sophia-train", "sophia-convert", "sophia-rollout", "sophia-profile"}
    for target in scripts.values():
        module, func = target.split(":")
        assert (REPO / (module.replace(".", "/") + ".py")).is_file(), target


def test_no_pypi_apex_dependency():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = list(project["dependencies"]) + [d for ds in project["optional-dependencies"].values() for d in ds]
    assert not [d for d in deps if d.split("[")[0].split("=")[0].split("<")[0].split(">")[0].strip() == "apex"]
