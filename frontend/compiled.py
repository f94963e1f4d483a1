"""The optional compiled build of the hot-path modules (Cython, pure-Python mode).

The Python sources stay the reference: nothing here changes what they do, and ``make test`` runs
them as they are. ``make compiled`` (``python -m frontend.compiled build``) has Cython compile the
modules every command and chat line goes through into extension modules beside their sources; Python
imports an extension module before a source of the same name, so from then on the frontend runs
them compiled. ``make clean-compiled`` (``python -m frontend.compiled clean``) removes them again.
``python -m frontend.compiled status`` says which modules are compiled, and the frontend logs it at
start. A source newer than its extension module is a stale build: ``status`` says so, and the
frontend refuses to start on one (the compiled code would not be the code in the checkout).

The modules are compiled as they are (no Cython type declarations; annotations are not taken as C
types, ``annotation_typing=False``), with ``binding=True`` so that functions and methods introspect
like Python's. Measured in BENCHMARKS.md ("The compiled build").
"""

from __future__ import annotations

import argparse
import importlib.machinery
import os
import sys
from typing import Iterable

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

#: what a command, a chat line and an event pass through, relative to the package
HOT_MODULES = (
    "protocol.py", "room.py", "inflight.py", "incoming.py", "outgoing.py", "pacing.py", "text.py",
    "chat/base.py", "chat/irc.py", "chat/irc_wire.py", "chat/irc_format.py", "chat/irc_delivery.py",
    "chat/irc_channels.py", "chat/sendqueue.py", "chat/tenant_share.py",
)

_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def _extensions_of(source: str) -> list[str]:
    stem = source[:-len(".py")]
    return [stem + suffix for suffix in _SUFFIXES if os.path.exists(stem + suffix)]


def status(package_dir: str = PACKAGE_DIR) -> dict[str, str]:
    """Each hot module's state: ``source`` (runs from its ``.py``), ``compiled`` or ``stale`` (an
    extension module older than its source)."""
    states = {}
    for module in HOT_MODULES:
        source = os.path.join(package_dir, module)
        built = _extensions_of(source)
        if not built:
            states[module] = "source"
        elif any(os.path.getmtime(path) < os.path.getmtime(source) for path in built):
            states[module] = "stale"
        else:
            states[module] = "compiled"
    return states


def describe(states: dict[str, str]) -> str:
    """One line for the start-up log."""
    compiled = [m for m, s in states.items() if s == "compiled"]
    if not compiled and "stale" not in states.values():
        return "hot-path modules run from their Python sources"
    stale = [m for m, s in states.items() if s == "stale"]
    text = f"hot-path modules compiled: {len(compiled)} of {len(states)}"
    if stale:
        text += f"; stale (older than their source): {', '.join(stale)}"
    return text


def stale_modules(package_dir: str = PACKAGE_DIR) -> list[str]:
    return [m for m, s in status(package_dir).items() if s == "stale"]


def build(modules: Iterable[str] = HOT_MODULES, package_dir: str = PACKAGE_DIR) -> None:
    """Compile ``modules`` in place (needs Cython and a C compiler: ``make compiled`` installs them)."""
    from Cython.Build import cythonize  # only here: the frontend itself never needs Cython
    from setuptools import Extension
    from setuptools.dist import Distribution

    root = os.path.dirname(package_dir)
    package = os.path.basename(package_dir)
    extensions = []
    for module in modules:
        name = package + "." + module[:-len(".py")].replace("/", ".")
        extensions.append(Extension(name, [os.path.join(package, module)]))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        ext_modules = cythonize(extensions, quiet=True, compiler_directives={
            # annotations are not C types here: the code keeps Python's semantics exactly
            "language_level": 3, "binding": True, "annotation_typing": False})
        dist = Distribution({"name": "greenroom-compiled", "ext_modules": ext_modules})
        cmd = dist.get_command_obj("build_ext")
        cmd.inplace = True
        cmd.build_temp = os.path.join(root, "build", "compiled")
        cmd.ensure_finalized()
        cmd.run()
    finally:
        os.chdir(cwd)
    for module in modules:  # the generated C is not kept beside the sources
        c_file = os.path.join(package_dir, module[:-len(".py")] + ".c")
        if os.path.exists(c_file):
            os.remove(c_file)


def clean(package_dir: str = PACKAGE_DIR) -> list[str]:
    """Remove every compiled hot module; returns the files removed."""
    removed = []
    for module in HOT_MODULES:
        source = os.path.join(package_dir, module)
        for path in _extensions_of(source) + [source[:-len(".py")] + ".c"]:
            if os.path.exists(path):
                os.remove(path)
                removed.append(path)
    return removed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m frontend.compiled", description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=("build", "clean", "status"))
    args = ap.parse_args(argv)
    if args.action == "build":
        build()
    elif args.action == "clean":
        for path in clean():
            print("removed", os.path.relpath(path))
    states = status()
    for module, state in states.items():
        print(f"{module:28} {state}")
    print(describe(states))
    return 1 if "stale" in states.values() else 0


if __name__ == "__main__":
    sys.exit(main())
