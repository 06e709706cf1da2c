"""The house rules of issue 16 that a reader can count: no function in npmobile/ longer than
about 60 lines (its docstring not counted), and none but the numba loops nested deeper than 5."""

import ast
import pathlib

import npmobile

NESTING = (ast.For, ast.While, ast.If, ast.With, ast.Try, ast.AsyncFor, ast.AsyncWith)


def _depth(node, d=0):
    """The deepest nesting of blocks inside node, not counting the functions defined in it."""
    best = d
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            best = max(best, _depth(child, d + isinstance(child, NESTING)))
    return best


def _functions():
    root = pathlib.Path(npmobile.__file__).parent
    for path in sorted(root.rglob("*.py")):
        for f in ast.walk(ast.parse(path.read_text())):
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = f.body[1:] if isinstance(f.body[0], ast.Expr) and isinstance(f.body[0].value, ast.Constant) else f.body
                lines = body[-1].end_lineno - body[0].lineno + 1 if body else 0
                jitted = any("jit" in ast.unparse(d) for d in f.decorator_list)
                yield f"{path.relative_to(root)}:{f.lineno} {f.name}", lines, _depth(f), jitted


def test_the_checker_sees_nesting():
    tree = ast.parse("def f():\n for a in b:\n  if c:\n   with d:\n    while e:\n     try:\n      if g:\n       pass\n     except E:\n      pass\n")
    assert _depth(tree.body[0]) == 6


def test_functions_are_short_and_shallow():
    found = list(_functions())
    assert len(found) > 200  # the walk reached the package
    long = [(name, n) for name, n, _, _ in found if n > 60]
    deep = [(name, d) for name, _, d, jitted in found if d > 5 and not jitted]
    assert long == [] and deep == [], (long, deep)
