"""The compiled module and its stub agree.

``python/lmcache_native/_C.pyi`` is what mypy and readers see of ``lmcache_native._C``: every
name the module defines is in the stub, and every function's parameters are the binding's, in
order.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from lmcache_native import _native

STUB = Path(_native.__file__).with_name("_C.pyi")


def _stub_functions() -> dict[str, list[str]]:
    tree = ast.parse(STUB.read_text(encoding="utf-8"))
    return {
        node.name: [a.arg for a in (*node.args.args, *node.args.kwonlyargs)]
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
    }


def _stub_names() -> set[str]:
    tree = ast.parse(STUB.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_every_module_name_is_in_the_stub_and_back() -> None:
    module = {n for n in dir(_native.C) if not n.startswith("__")} | {"__version__"}
    assert _stub_names() == module


@pytest.mark.parametrize("name", sorted(_stub_functions()))
def test_stub_parameters_are_the_bindings(name: str) -> None:
    """Pybind11's signature line names the parameters (``arg0`` when a binding names none)."""
    doc = getattr(_native.C, name).__doc__ or ""
    signature = doc.splitlines()[0]
    params = signature[signature.index("(") + 1 : signature.rindex(")")]
    names = re.findall(r"(?:^|, )(\w+):", params)
    assert names == _stub_functions()[name], signature


def test_layout_class_fields_are_in_the_stub() -> None:
    tree = ast.parse(STUB.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PagedKVLayout")
    stub = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)} - {"__init__"}
    bound = {n for n in dir(_native.PagedKVLayout) if not n.startswith("_")}
    assert stub == bound
