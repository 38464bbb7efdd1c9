"""tools/mypyc_build.py: which modules it compiles, what it refuses, what it removes."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mypyc_build", ROOT / "tools" / "mypyc_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


tool = _load_tool()
EXT = tool.EXT_SUFFIX


def _tree(tmp_path: Path, modules: dict[str, str]) -> Path:
    """A source tree holding ``modules`` (dotted name -> source)."""
    src = tmp_path / "src"
    for module, source in modules.items():
        path = tool.source_path(src, module)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    return src


def test_class_keywords_are_found_except_metaclass() -> None:
    assert tool.class_keyword_problem("class A(B):\n    x: int\n") is None
    assert tool.class_keyword_problem("class A(B, metaclass=M):\n    pass\n") is None
    problem = tool.class_keyword_problem(
        "class Ok:\n    pass\n\n\n"
        "class S(msgspec.Struct, frozen=True, array_like=True):\n    x: int\n"
    )
    assert problem == "class S (line 5) passes array_like, frozen"
    assert tool.class_keyword_problem("class A(B, **options):\n    pass\n") is not None


def test_compiled_modules_pass_no_class_keywords_and_refused_ones_do() -> None:
    # If a compiled module gains `class X(msgspec.Struct, frozen=True)`, mypyc would
    # silently drop the keywords (python/mypy#21938): this fails first.
    src = ROOT / "src"
    for module in tool.KNOWN_MODULES:
        source = tool.source_path(src, module).read_text(encoding="utf-8")
        assert tool.class_keyword_problem(source) is None, module
    for module in tool.REFUSED_MODULES:
        source = tool.source_path(src, module).read_text(encoding="utf-8")
        assert tool.class_keyword_problem(source) is not None, module
    assert not set(tool.KNOWN_MODULES) & set(tool.REFUSED_MODULES)


def test_selection_accepts_the_defaults_and_refuses_the_rest() -> None:
    src = ROOT / "src"
    assert tool.selection_problem(src, tool.DEFAULT_MODULES) is None
    assert tool.selection_problem(src, tool.KNOWN_MODULES) is None
    assert tool.selection_problem(src, ()) == "no modules to compile"
    twice = ("dynakv.core.quorum", "dynakv.core.quorum")
    assert tool.selection_problem(src, twice) == "a module is named twice"
    refused = tool.selection_problem(src, ("dynakv.core.record",))
    assert refused is not None and "mypy#21938" in refused
    unknown = tool.selection_problem(src, ("dynakv.node.runtime",))
    assert unknown is not None and "not a measured module" in unknown


def test_selection_refuses_a_module_that_gained_class_keywords(tmp_path: Path) -> None:
    src = _tree(tmp_path, {"dynakv.core.quorum": "class T(Base, frozen=True):\n    pass\n"})
    problem = tool.selection_problem(src, ("dynakv.core.quorum",))
    assert problem is not None and "class T (line 1) passes frozen" in problem
    missing = tool.selection_problem(src, ("dynakv.core.versions",))
    assert missing is not None and "no source" in missing


def test_clean_removes_only_what_the_build_makes(tmp_path: Path) -> None:
    src = _tree(tmp_path, {"dynakv.core.quorum": "X = 1\n", "dynakv.api.wire": "Y = 2\n"})
    built = [
        tool.extension_path(src, "dynakv.core.quorum"),
        tool.extension_path(src, "dynakv.api.wire"),
        tool.shared_library_path(src),
        tool.manifest_path(src),
    ]
    for path in built:
        path.write_bytes(b"built")
    orphan = src / "dynakv" / "core" / f"native_only{EXT}"  # no .py beside it: not ours
    orphan.write_bytes(b"someone else's")
    other = tmp_path / f"elsewhere{EXT}"
    other.write_bytes(b"outside")
    assert tool.built_artifacts(src) == sorted(built)
    assert sorted(tool.clean(src)) == sorted(built)
    assert not any(path.exists() for path in built)
    assert orphan.exists() and other.exists()
    assert tool.source_path(src, "dynakv.core.quorum").read_text(encoding="utf-8") == "X = 1\n"
    assert tool.built_artifacts(src) == []
    assert tool.clean(src) == []


def test_a_changed_source_makes_the_whole_build_stale(tmp_path: Path) -> None:
    src = _tree(tmp_path, {"dynakv.core.quorum": "X = 1\n", "dynakv.core.versions": "Y = 2\n"})
    modules = ("dynakv.core.quorum", "dynakv.core.versions")
    for module in modules:
        tool.extension_path(src, module).write_bytes(b"built")
    tool.shared_library_path(src).write_bytes(b"built")
    digests = {m: tool.source_digest(tool.source_path(src, m)) for m in modules}
    tool.manifest_path(src).write_text(json.dumps(digests), encoding="utf-8")
    assert tool.stale_modules(src) == []
    assert tool.clean_stale(src) == []
    tool.source_path(src, "dynakv.core.versions").write_text("Y = 3\n", encoding="utf-8")
    assert tool.stale_modules(src) == ["dynakv.core.versions"]
    removed = tool.clean_stale(src)
    assert tool.extension_path(src, "dynakv.core.quorum") in removed  # one shared library
    assert tool.built_artifacts(src) == []


def test_an_extension_the_manifest_does_not_know_is_stale(tmp_path: Path) -> None:
    src = _tree(tmp_path, {"dynakv.core.quorum": "X = 1\n"})
    tool.extension_path(src, "dynakv.core.quorum").write_bytes(b"built by hand")
    assert tool.stale_modules(src) == ["dynakv.core.quorum"]


@pytest.mark.skipif(
    shutil.which("gcc") is None
    or not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file(),
    reason="needs gcc and the Python headers to compile",
)
def test_a_real_build_loads_compiled_and_cleans_back_to_pure(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(
        ROOT / "src" / "dynakv",
        src / "dynakv",
        ignore=shutil.ignore_patterns("__pycache__", f"*{EXT}", tool.MANIFEST_NAME),
    )
    assert tool.main(["--src-dir", str(src), "dynakv.core.quorum"]) == 0
    assert tool.stale_modules(src) == []
    check = (
        "import dynakv.core.quorum as q; print(q.__file__); "
        "print(q.Tally(('a',), 1).on_success('a'))"
    )
    env = {"PYTHONPATH": str(src), "PYTHONDONTWRITEBYTECODE": "1"}

    def run() -> list[str]:
        result = subprocess.run(
            [sys.executable, "-c", check], env=env, capture_output=True, text=True, check=True
        )
        return result.stdout.split()

    assert run() == [str(tool.extension_path(src, "dynakv.core.quorum")), "succeeded"]
    assert tool.main(["--src-dir", str(src), "--clean"]) == 0
    assert run() == [str(tool.source_path(src, "dynakv.core.quorum")), "succeeded"]
