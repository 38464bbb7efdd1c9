"""Compile dynakv's pure hot modules with mypyc, in place, or remove what it built.

    .venv/bin/python tools/mypyc_build.py [--src-dir src] [MODULE ...]
    .venv/bin/python tools/mypyc_build.py --clean [--src-dir src]
    .venv/bin/python tools/mypyc_build.py --clean-stale [--src-dir src]
    .venv/bin/python tools/mypyc_build.py --list [--src-dir src]

Owns: the build and removal of mypyc extension modules beside dynakv's
sources. Each compiled module ``dynakv/x/y.py`` gets ``dynakv/x/y<EXT_SUFFIX>``
beside it (Python's import system prefers the extension to the ``.py``), and
the modules of one build share ``dynakv__mypyc<EXT_SUFFIX>`` at the top of the
source directory. A manifest (``dynakv/.mypyc-manifest.json``) records the
sha256 of each compiled source, so ``--clean-stale`` can remove a build whose
source changed since (an extension module never sees later edits to its
``.py``: a stale one would silently run old code).

Invariants: the pure-Python modules are the fallback and stay untouched: this
tool only ever creates or deletes files named ``<module><EXT_SUFFIX>`` beside
an existing ``<module>.py``, the shared library and the manifest; a failed
build leaves no extension behind (all of them are removed, so a half-built
set never loads). The C sources and objects go to a temporary directory.

It must never edit a ``.py`` file, never compile a module outside
``DEFAULT_MODULES`` and ``CANDIDATE_MODULES`` (each was measured and tested
compiled; see docs/benchmarks.md), never compile a module with a class
statement that passes keywords (mypyc drops them silently: a frozen, array-like
msgspec Struct would become a mutable one encoded as a map, python/mypy#21938),
and never write outside ``--src-dir`` and the temporary directory.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os  # noqa: TID251 (a build tool, not the pure core)
import subprocess
import sys
import sysconfig
import tempfile
import time  # noqa: TID251
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parent.parent
GROUP_NAME: Final = "dynakv"
MANIFEST_NAME: Final = ".mypyc-manifest.json"
EXT_SUFFIX: Final = str(sysconfig.get_config_var("EXT_SUFFIX"))
BUILD_TIMEOUT_S: Final = 900

# Compiled by default: each measured >= 1.5x on its own hot functions
# (bench/mypyc_speed.py; coordinator only just, 1.34-1.51x over three runs)
# and passes tests/unit, tests/property and tests/simulation compiled. The
# whole node gains nothing measurable from them (docs/benchmarks.md,
# 2026-12-02), so nothing runs this tool yet.
DEFAULT_MODULES: Final = (
    "dynakv.core.versions",
    "dynakv.core.quorum",
    "dynakv.core.coordinator",
    "dynakv.core.etag",
    "dynakv.api.wire",
)
# Measured and tested, but not compiled unless named.
CANDIDATE_MODULES: Final[tuple[str, ...]] = ()
KNOWN_MODULES: Final = DEFAULT_MODULES + CANDIDATE_MODULES
# Modules that compile but run differently compiled: never built. mypyc drops
# the keyword arguments of a class statement (python/mypy#21938, open), so
# ``class Sibling(msgspec.Struct, frozen=True, array_like=True)`` compiles to a
# mutable Struct encoded as a map: the storage and wire formats would change.
REFUSED_MODULES: Final = {
    "dynakv.core.record": "msgspec Structs with class keywords (python/mypy#21938)",
    "dynakv.core.session": "msgspec Structs with class keywords (python/mypy#21938)",
    "dynakv.core.idempotency": "msgspec Structs with class keywords (python/mypy#21938)",
    "dynakv.core.ring": "msgspec Structs with class keywords (python/mypy#21938)",
    "dynakv.net.codec": "msgspec Structs with class keywords (python/mypy#21938)",
}


def source_path(src_dir: Path, module: str) -> Path:
    """``dynakv.core.record`` -> ``<src_dir>/dynakv/core/record.py``."""
    return src_dir.joinpath(*module.split(".")).with_suffix(".py")


def extension_path(src_dir: Path, module: str) -> Path:
    return source_path(src_dir, module).with_suffix(EXT_SUFFIX)


def shared_library_path(src_dir: Path) -> Path:
    return src_dir / f"{GROUP_NAME}__mypyc{EXT_SUFFIX}"


def manifest_path(src_dir: Path) -> Path:
    return src_dir / GROUP_NAME / MANIFEST_NAME


def class_keyword_problem(source: str) -> str | None:
    """Why mypyc would compile ``source`` into something that behaves differently, or
    None: a class statement with keyword arguments (other than ``metaclass``), which
    mypyc silently drops (python/mypy#21938)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            dropped = sorted(k.arg or "**" for k in node.keywords if k.arg != "metaclass")
            if dropped:
                return f"class {node.name} (line {node.lineno}) passes {', '.join(dropped)}"
    return None


def selection_problem(src_dir: Path, modules: Sequence[str]) -> str | None:
    """Why ``modules`` cannot be compiled from ``src_dir``, or None."""
    if not modules:
        return "no modules to compile"
    if len(set(modules)) != len(modules):
        return "a module is named twice"
    for module in modules:
        if module in REFUSED_MODULES:
            return f"{module} is refused: {REFUSED_MODULES[module]}"
        if module not in KNOWN_MODULES:
            return f"{module} is not a measured module (known: {', '.join(KNOWN_MODULES)})"
        source = source_path(src_dir, module)
        if not source.is_file():
            return f"{module}: no source at {source}"
        problem = class_keyword_problem(source.read_text(encoding="utf-8"))
        if problem is not None:
            return f"{module} would change meaning compiled (python/mypy#21938): {problem}"
    return None


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def built_artifacts(src_dir: Path) -> list[Path]:
    """Every file this tool may have created under ``src_dir`` that exists now: an
    extension beside its ``.py``, the shared library, the manifest. Sorted."""
    found: list[Path] = []
    package = src_dir / GROUP_NAME
    if package.is_dir():
        for extension in package.rglob(f"*{EXT_SUFFIX}"):
            stem = extension.name[: -len(EXT_SUFFIX)]
            if extension.with_name(stem + ".py").is_file():
                found.append(extension)
    for extra in (shared_library_path(src_dir), manifest_path(src_dir)):
        if extra.is_file():
            found.append(extra)
    return sorted(found)


def clean(src_dir: Path) -> list[Path]:
    """Remove every built artifact; returns what was removed."""
    removed = built_artifacts(src_dir)
    for path in removed:
        path.unlink()
    return removed


def read_manifest(src_dir: Path) -> dict[str, str]:
    """Module -> sha256 of the source it was compiled from ({} without a manifest)."""
    path = manifest_path(src_dir)
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), data
    return {str(module): str(digest) for module, digest in data.items()}


def stale_modules(src_dir: Path) -> list[str]:
    """Compiled modules whose source changed (or vanished) since the build, and
    extensions the manifest does not know (built some other way): sorted."""
    manifest = read_manifest(src_dir)
    stale: set[str] = set()
    for module, digest in manifest.items():
        source = source_path(src_dir, module)
        if not source.is_file() or source_digest(source) != digest:
            stale.add(module)
    for module in KNOWN_MODULES:
        if extension_path(src_dir, module).is_file() and module not in manifest:
            stale.add(module)
    return sorted(stale)


def clean_stale(src_dir: Path) -> list[Path]:
    """Remove the whole build if any module in it is stale (the modules share one
    library, so a partial build is rebuilt whole); returns what was removed."""
    if not stale_modules(src_dir):
        return []
    return clean(src_dir)


def _setup_script(modules: Sequence[str], target_dir: str, config_file: str) -> str:
    # Run in a child process with cwd = src_dir, so setuptools sees no
    # pyproject.toml of ours and build_ext --inplace lands beside the sources.
    paths = [str(Path(*module.split(".")).with_suffix(".py")) for module in modules]
    return (
        "import sys\n"
        "from setuptools import setup\n"
        "from mypyc.build import mypycify\n"
        f"extensions = mypycify({['--config-file', config_file, *paths]!r}, opt_level='3',"
        f" group_name={GROUP_NAME!r}, target_dir={target_dir!r})\n"
        "setup(name='dynakv-mypyc', ext_modules=extensions, script_args=['build_ext',"
        f" '--inplace', '--build-temp', {target_dir + '/temp'!r}])\n"
    )


def _config_file(src_dir: Path) -> Path:
    """The strict mypy config: the source tree's own pyproject.toml, else this repository's."""
    beside = src_dir.parent / "pyproject.toml"
    return beside if beside.is_file() else REPO / "pyproject.toml"


def _import_problem(src_dir: Path, modules: Sequence[str]) -> str | None:
    """Why the fresh build does not load from ``src_dir`` in a new interpreter, or None."""
    script = (
        "import importlib, sys\n"
        f"for name in {list(modules)!r}:\n"
        "    path = importlib.import_module(name).__file__ or ''\n"
        f"    assert path.endswith({EXT_SUFFIX!r}), (name, path)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(src_dir), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode == 0:
        return None
    return (result.stderr.strip().splitlines() or ["no output"])[-1]


def build(src_dir: Path, modules: Sequence[str], *, verbose: bool = False) -> float:
    """Compile ``modules`` in place; returns the build time in seconds. On failure,
    removes every artifact and raises ``RuntimeError`` with the compiler's tail."""
    problem = selection_problem(src_dir, modules)
    if problem is not None:
        raise ValueError(problem)
    clean(src_dir)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dynakv-mypyc-") as target_dir:
        script = _setup_script(modules, target_dir, str(_config_file(src_dir)))
        result = subprocess.run(
            [sys.executable, "-c", script],
            cwd=src_dir,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
    if verbose:
        print(result.stdout, result.stderr, sep="\n")
    missing = [m for m in modules if not extension_path(src_dir, m).is_file()]
    if result.returncode != 0 or missing:
        clean(src_dir)
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise RuntimeError(f"mypyc build failed (exit {result.returncode}):\n{tail}")
    problem = _import_problem(src_dir, modules)
    if problem is not None:
        clean(src_dir)
        raise RuntimeError(f"the compiled modules do not import: {problem}")
    digests = {m: source_digest(source_path(src_dir, m)) for m in sorted(modules)}
    manifest_path(src_dir).write_text(json.dumps(digests, indent=1) + "\n", encoding="utf-8")
    return time.monotonic() - started


def _describe(paths: Iterable[Path], src_dir: Path) -> str:
    return ", ".join(str(p.relative_to(src_dir)) for p in paths) or "nothing"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help=f"default: {' '.join(DEFAULT_MODULES)}")
    parser.add_argument("--src-dir", type=Path, default=REPO / "src")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--clean", action="store_true", help="remove every built artifact")
    action.add_argument("--clean-stale", action="store_true", help="remove a stale build")
    action.add_argument("--list", action="store_true", help="show what is built and stale")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    src_dir: Path = args.src_dir.resolve()
    if args.clean:
        print(f"mypyc_build: removed {_describe(clean(src_dir), src_dir)}")
        return 0
    if args.clean_stale:
        print(f"mypyc_build: stale build removed: {_describe(clean_stale(src_dir), src_dir)}")
        return 0
    if args.list:
        print(f"built: {_describe(built_artifacts(src_dir), src_dir)}")
        print(f"stale: {', '.join(stale_modules(src_dir)) or 'none'}")
        return 0
    modules = tuple(args.modules) or DEFAULT_MODULES
    try:
        elapsed_s = build(src_dir, modules, verbose=args.verbose)
    except (ValueError, RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"mypyc_build: not compiled, the pure-Python modules run: {exc}", file=sys.stderr)
        return 1
    print(
        f"mypyc_build: compiled {len(modules)} modules in {elapsed_s:.1f} s: {', '.join(modules)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
