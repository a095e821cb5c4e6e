"""Meta-tests: the public surface of `schemas`, the import rules between packages, and the
CLI's help text. They cover new modules and commands as they appear."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import schemas
from collector import __version__
from collector.cli import COMMANDS, cli

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- schemas.__all__


def _names_bound_by_init() -> set[str]:
    """Every public name `schemas/__init__.py` binds at top level (incl. TYPE_CHECKING)."""
    tree = ast.parse((ROOT / "schemas" / "__init__.py").read_text(encoding="utf-8"))
    body = list(tree.body)
    body += [n for node in tree.body if isinstance(node, ast.If) for n in node.body]
    names: set[str] = set()
    for node in body:
        if isinstance(node, ast.ImportFrom) and node.module not in ("__future__", "typing"):
            names |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
    return {n for n in names if not n.startswith("_")}


def test_schemas_all_lists_every_public_name() -> None:
    assert sorted(schemas.__all__) == sorted(set(schemas.__all__)), "duplicates in __all__"
    assert set(schemas.__all__) == _names_bound_by_init()
    public = {
        n
        for n, v in vars(schemas).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType)
    }
    public -= {"annotations", "TYPE_CHECKING"}
    assert public <= set(schemas.__all__)


@pytest.mark.parametrize("name", schemas.__all__)
def test_schemas_all_names_are_importable(name: str) -> None:
    assert getattr(schemas, name) is not None
    namespace: dict[str, object] = {}
    exec(f"from schemas import {name}", namespace)
    assert namespace[name] is getattr(schemas, name)


def test_unknown_schemas_attribute_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        schemas.no_such_name  # noqa: B018  # the access is the test


# ---------------------------------------------------------------------------- import rules


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_wire_codec_imports_without_pydantic() -> None:
    proc = _run_python("import schemas.wire, sys; assert 'pydantic' not in sys.modules")
    assert proc.returncode == 0, proc.stderr


def test_schemas_package_defers_pydantic_until_validation_is_used() -> None:
    code = (
        "import sys, schemas, schemas.errors, schemas.kinds\n"
        "assert 'pydantic' not in sys.modules, 'eager pydantic'\n"
        "schemas.ReadingValidator\n"
        "assert 'pydantic' in sys.modules\n"
    )
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr


def _imports(path: Path) -> set[str]:
    """Top-level package names a module imports, including `importlib.import_module("x")`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value.split(".")[0])
    return found


AGENT_FORBIDDEN = {"collector", "pydantic", "sqlite_utils", "aiohttp", "click"}
# The agent's command line is the one agent module that may use click.
AGENT_CLI = Path("agents/cli.py")


def _modules(package: str) -> list[Path]:
    paths = sorted((ROOT / package).rglob("*.py"))
    assert paths, f"no modules found under {package}/"
    return paths


@pytest.mark.parametrize("path", _modules("agents"), ids=lambda p: str(p.relative_to(ROOT)))
def test_agents_import_only_the_agent_dependencies(path: Path) -> None:
    forbidden = AGENT_FORBIDDEN - ({"click"} if path.relative_to(ROOT) == AGENT_CLI else set())
    assert not _imports(path) & forbidden


@pytest.mark.parametrize("path", _modules("schemas"), ids=lambda p: str(p.relative_to(ROOT)))
def test_schemas_import_neither_agents_nor_collector(path: Path) -> None:
    assert not _imports(path) & {"agents", "collector"}


@pytest.mark.parametrize("name", ["wire.py", "errors.py", "__init__.py", "kinds.py"])
def test_agent_side_schemas_modules_need_only_stdlib_and_msgpack(name: str) -> None:
    allowed = set(sys.stdlib_module_names) | {"msgpack", "schemas"}
    assert _imports(ROOT / "schemas" / name) <= allowed


def test_importing_every_agent_module_loads_no_collector_dependency() -> None:
    """The AST check above, at run time: catches imports hidden behind other modules."""
    code = (
        "import importlib, pkgutil, sys, agents\n"
        "for m in pkgutil.walk_packages(agents.__path__, 'agents.'):\n"
        "    if m.name not in ('agents.__main__', 'agents.cli'):\n"
        "        importlib.import_module(m.name)\n"
        "bad = {'collector', 'pydantic', 'sqlite_utils', 'aiohttp', 'click'} & {\n"
        "    n.split('.')[0] for n in sys.modules}\n"
        "assert not bad, bad\n"
    )
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------- CLI help


def _available_commands() -> list[str]:
    """Subcommands whose module exists in this tree; the rest are not built yet."""
    names = []
    for name, target in COMMANDS.items():
        module_name = target.split(":")[0]
        if importlib.util.find_spec(module_name) is not None:
            names.append(name)
    return names


def _walk(cmd: click.Command, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], click.Command]]:
    out = [(path, cmd)]
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        for sub in cmd.list_commands(ctx):
            sub_cmd = cmd.get_command(ctx, sub)
            assert sub_cmd is not None, f"{' '.join(path)} lists {sub} but cannot load it"
            out += _walk(sub_cmd, (*path, sub))
    return out


def test_every_available_command_has_help_text() -> None:
    runner = CliRunner()
    checked = 0
    for name in _available_commands():
        cmd = cli.get_command(click.Context(cli), name)
        assert cmd is not None, f"COMMANDS[{name!r}] did not load"
        for path, sub in _walk(cmd, (name,)):
            assert (sub.help or "").strip(), f"`telemetry {' '.join(path)}` has no help text"
            result = runner.invoke(cli, [*path, "--help"], prog_name="telemetry")
            assert result.exit_code == 0, result.output
            assert f"Usage: telemetry {' '.join(path)}" in result.output
            checked += 1
    assert checked >= len(_available_commands())


def test_top_level_help_lists_available_commands() -> None:
    result = CliRunner().invoke(cli, ["--help"], prog_name="telemetry")
    assert result.exit_code == 0
    assert "Usage:" in result.output
    for name in _available_commands():
        assert name in result.output


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["--version"]])
def test_console_entry_points_answer_help_and_version(argv: list[str]) -> None:
    script = Path(sys.executable).parent / "telemetry"
    for cmd in ([str(script)] if script.exists() else []) + [[sys.executable, "-m", "collector"]]:
        command = cmd if isinstance(cmd, list) else [cmd]
        proc = subprocess.run(
            [*command, *argv], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        if argv == ["--version"]:
            assert proc.stdout.strip() == f"telemetry, version {__version__}"
        else:
            assert "Usage: telemetry" in proc.stdout


def test_unknown_command_is_one_line_and_exit_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "collector", "no-such-command"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("telemetry: error:")
