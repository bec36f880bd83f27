"""The brief's size rule, checked: no function in the package, the kernels or train/ over 80 lines."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAX_LINES = 80


def _long_functions(folder: str):
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    yield f"{path.relative_to(ROOT)}::{node.name} ({lines} lines)"


@pytest.mark.parametrize("folder", ["maskformer_fast", "kernels", "train"])
def test_no_function_is_over_80_lines(folder):
    assert list(_long_functions(folder)) == []
