"""expr: the shape and condition expressions of the architecture data, a closed arithmetic.

An expression is Python syntax over config values (`"6 * dim"`, `"qk_rms or qk_ln"`,
`"index in (dual_attention_layers or ())"`), parsed with `ast` and walked by hand: only the node
types in `ALLOWED` pass, so evaluating a data file can never call, import or look up attributes.

    >>> evaluate("num_attention_heads * attention_head_dim", {"num_attention_heads": 24, "attention_head_dim": 64})
    1536
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from functools import cache
from typing import Any

from hpspec.core.errors import ArchitectureDataError

ALLOWED = (
    ast.Expression, ast.Tuple, ast.Name, ast.Load, ast.Constant, ast.BinOp, ast.Add, ast.Sub, ast.Mult,
    ast.FloorDiv, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.Compare, ast.Eq, ast.NotEq,
    ast.In,
)  # fmt: skip

CONSTANTS: Mapping[str, Any] = {"True": True, "False": False, "None": None}


@cache
def compile_expression(text: str, where: str = "expression") -> ast.Expression:
    """The parsed expression; ArchitectureDataError when it does not parse or uses a refused node."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ArchitectureDataError(f"{where}: cannot parse {text!r}") from None
    for node in ast.walk(tree):
        if not isinstance(node, ALLOWED):
            raise ArchitectureDataError(f"{where}: {type(node).__name__} is not allowed in {text!r}")
    return tree


def evaluate(text: str, names: Mapping[str, Any]) -> Any:
    """Evaluate a shape or condition expression; unknown names are None (an absent config key)."""
    return _eval(compile_expression(text).body, names)


def _eval(node: ast.AST, names: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return CONSTANTS[node.id] if node.id in CONSTANTS else names.get(node.id)
    if isinstance(node, ast.Tuple):
        return tuple(_eval(e, names) for e in node.elts)
    if isinstance(node, ast.BinOp):
        return _binary(node.op, _eval(node.left, names), _eval(node.right, names))
    if isinstance(node, ast.BoolOp):
        values = [_eval(v, names) for v in node.values]
        result = values[0]
        for value in values[1:]:
            result = (result and value) if isinstance(node.op, ast.And) else (result or value)
        return result
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, names)
        return (not value) if isinstance(node.op, ast.Not) else -value
    if isinstance(node, ast.Compare):
        return _compare(node, names)
    raise ArchitectureDataError(f"unsupported expression node {type(node).__name__}")


def _binary(op: ast.operator, left: Any, right: Any) -> Any:
    if isinstance(op, ast.Add):
        return left + right
    if isinstance(op, ast.Sub):
        return left - right
    if isinstance(op, ast.Mult):
        return left * right
    return left // right


def _compare(node: ast.Compare, names: Mapping[str, Any]) -> bool:
    """A chain of `==`, `!=`, `in`: true when every link holds."""
    left = _eval(node.left, names)
    for op, comparator in zip(node.ops, node.comparators):
        right = _eval(comparator, names)
        holds = left in right if isinstance(op, ast.In) else (left == right) == isinstance(op, ast.Eq)
        if not holds:
            return False
        left = right
    return True
