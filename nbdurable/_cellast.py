"""What a ``%%step`` cell binds and reads, from its syntax tree alone.

*Binds*: top-level names the cell assigns (assignments, for/with targets, imports, defs,
classes, walrus), in order, with the def/class/lambda statements among them and the
targets of ``with`` blocks. *Reads*: names the cell loads before binding them itself, and
free names of the functions, lambdas and classes it defines (they read the notebook's
globals when called), minus builtins the notebook has not rebound.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
from collections.abc import Iterator

_BUILTINS = frozenset(dir(builtins))


@dataclasses.dataclass
class CellShape:
    """The names a cell binds and reads.

    Attributes:
        binds: top-level names bound, in the order first bound.
        defs: the def and class statements (restored from their source).
        lambdas: names bound to a lambda at top level, with the lambda's source.
        with_targets: names bound by ``with ... as name`` (resources, exited after the block).
        reads: names read from the notebook's namespace, in the order first read.
    """

    binds: list[str]
    defs: dict[str, ast.stmt]
    lambdas: dict[str, str]
    with_targets: set[str]
    reads: list[str]


def _target_names(target: ast.expr) -> Iterator[str]:
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, (ast.Tuple, ast.List)):
        for elt in target.elts:
            yield from _target_names(elt)
    elif isinstance(target, ast.Starred):
        yield from _target_names(target.value)


def assigned_names(tree: ast.Module) -> tuple[list[str], dict[str, ast.stmt]]:
    r"""Top-level names a cell binds, in order, and the def/class statements among them.

    Example:
        >>> assigned_names(ast.parse("import os\nx, y = 1, 2\ndef f(): z = 3"))[0]
        ['os', 'x', 'y', 'f']
    """
    shape = analyse(tree, "")
    return shape.binds, shape.defs


def analyse(tree: ast.Module, source: str) -> CellShape:
    r"""The names ``tree`` (parsed from ``source``) binds and reads.

    Example:
        >>> shape = analyse(ast.parse("y = x + 1\nkey = lambda r: r[k]\nwith open(p) as f: pass"),
        ...                 "y = x + 1\nkey = lambda r: r[k]\nwith open(p) as f: pass")
        >>> shape.binds, shape.reads, shape.lambdas, shape.with_targets
        (['y', 'key', 'f'], ['x', 'p', 'k'], {'key': 'lambda r: r[k]'}, {'f'})
    """
    shape = CellShape([], {}, {}, set(), [])
    bound: set[str] = set()

    def bind(*names: str) -> None:
        for name in names:
            if name not in bound:
                bound.add(name)
                shape.binds.append(name)

    def read(node: ast.AST | None) -> None:
        """Loads in an expression, before the statement binds anything."""
        if node is None:
            return
        for name in _loads(node):
            if name not in bound and name not in shape.reads:
                shape.reads.append(name)

    deferred: list[ast.AST] = []  # function, lambda and class bodies: read when called, after the cell

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                for decorator in node.decorator_list:
                    read(decorator)
                if isinstance(node, ast.ClassDef):
                    for base in [*node.bases, *(k.value for k in node.keywords)]:
                        read(base)
                else:
                    for default in [*node.args.defaults, *(d for d in node.args.kw_defaults if d)]:
                        read(default)
                deferred.append(node)
                bind(node.name)
                shape.defs[node.name] = node
            elif isinstance(node, ast.Assign):
                read(node.value)
                for target in node.targets:
                    read_subscripts(target)
                    bind(*_target_names(target))
                    if isinstance(node.value, ast.Lambda) and isinstance(target, ast.Name):
                        segment = ast.get_source_segment(source, node.value)
                        if segment:
                            shape.lambdas[target.id] = segment
            elif isinstance(node, ast.AugAssign):
                read(node.value)
                if isinstance(node.target, ast.Name):  # `total += x` reads total first
                    if node.target.id not in bound and node.target.id not in shape.reads:
                        shape.reads.append(node.target.id)
                else:
                    read(node.target)
                bind(*_target_names(node.target))
            elif isinstance(node, ast.AnnAssign):
                read(node.value)
                if node.value is not None:
                    bind(*_target_names(node.target))
            elif isinstance(node, (ast.For, ast.AsyncFor)):
                read(node.iter)
                bind(*_target_names(node.target))
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                for item in node.items:
                    read(item.context_expr)
                    if item.optional_vars is not None:
                        names = list(_target_names(item.optional_vars))
                        bind(*names)
                        shape.with_targets.update(names)
                visit(node.body)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                bind(*(alias.asname or alias.name.split(".")[0] for alias in node.names if alias.name != "*"))
            elif isinstance(node, (ast.If, ast.While)):
                read(node.test)
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    read(handler.type)
                    if handler.name:
                        bind(handler.name)
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            else:  # expressions, return, raise, del, assert, global...
                read(node)
                if isinstance(node, ast.Expr):
                    bind(*(sub.target.id for sub in ast.walk(node) if isinstance(sub, ast.NamedExpr)))

    def read_subscripts(target: ast.expr) -> None:
        if isinstance(target, (ast.Subscript, ast.Attribute)):
            read(target)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                read_subscripts(elt)

    visit(tree.body)
    for node in deferred + [n for n in ast.walk(tree) if isinstance(n, ast.Lambda)]:
        for name in _free_names(node):
            if name not in bound and name not in shape.reads:
                shape.reads.append(name)
    shape.reads = [n for n in shape.reads if n not in _BUILTINS or n in bound]
    return shape


def _walk_outside_lambdas(node: ast.AST) -> Iterator[ast.AST]:
    todo = [] if isinstance(node, ast.Lambda) else [node]
    while todo:
        current = todo.pop(0)
        yield current
        todo.extend(child for child in ast.iter_child_nodes(current) if not isinstance(child, ast.Lambda))


def _loads(node: ast.AST) -> Iterator[str]:
    """Names loaded in an expression, outside lambdas' bodies and comprehensions' own targets."""
    local: set[str] = set()
    for sub in _walk_outside_lambdas(node):
        if isinstance(sub, ast.comprehension):
            local.update(_target_names(sub.target))
    for sub in _walk_outside_lambdas(node):
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load) and sub.id not in local:
            yield sub.id


def _free_names(node: ast.AST) -> list[str]:
    """Global names a function, lambda or class body loads (names it binds itself are local)."""
    local: set[str] = set()
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        args = node.args
        for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
            if arg is not None:
                local.add(arg.arg)
    declared_global: set[str] = set()
    raw_body = getattr(node, "body", [])
    body: list[ast.AST] = raw_body if isinstance(raw_body, list) else [raw_body]
    for sub in (inner for stmt in body for inner in ast.walk(stmt)):
        if isinstance(sub, ast.Global):
            declared_global.update(sub.names)
        elif isinstance(sub, ast.Name) and isinstance(sub.ctx, (ast.Store, ast.Del)):
            local.add(sub.id)
        elif isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            local.add(sub.name)
        elif isinstance(sub, (ast.Import, ast.ImportFrom)):
            local.update(alias.asname or alias.name.split(".")[0] for alias in sub.names)
        elif isinstance(sub, ast.arg):
            local.add(sub.arg)
        elif isinstance(sub, ast.ExceptHandler) and sub.name:
            local.add(sub.name)
    local -= declared_global
    found: list[str] = []
    for sub in (inner for stmt in body for inner in ast.walk(stmt)):
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load) and sub.id not in local and sub.id not in found:
            found.append(sub.id)
    return found


def definition_source(source: str, node: ast.stmt) -> str:
    """A top-level def or class of a cell, decorators included."""
    decorators = getattr(node, "decorator_list", [])
    start = min([node.lineno, *(d.lineno for d in decorators)])
    return "".join(source.splitlines(keepends=True)[start - 1 : node.end_lineno])
