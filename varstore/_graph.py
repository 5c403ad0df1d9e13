"""Graphs: the registry of declared variables, their names, scopes and collections.

As in TensorFlow 1.x, variables register themselves in the default graph (or in
`g` inside `with g.as_default():`). The default graph is the only global state in
varstore; it is explicit and `reset_default_graph()` starts a fresh one.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ._errors import GraphError, InvalidNameError
from ._expr import walk
from ._names import check_name, check_scope, release_names, unique_name

if TYPE_CHECKING:
    from ._variable import Variable


class GraphKeys:
    """Standard collection names, spelled as TensorFlow 1.x spells them."""

    GLOBAL_VARIABLES = "variables"
    TRAINABLE_VARIABLES = "trainable_variables"
    LOCAL_VARIABLES = "local_variables"
    MODEL_VARIABLES = "model_variables"


class Graph:
    """A set of variable declarations with TensorFlow 1.x naming and collections.

    >>> g = vs.Graph()
    >>> with g.as_default():
    ...     v = vs.Variable(vs.zeros([2]), name="v")
    >>> v.graph is g
    True
    """

    def __init__(self) -> None:
        self._names_in_use: dict[str, int] = {}
        self._variables: dict[str, Variable] = {}
        self._name_undo: dict[str, list] = {}  # to give a failed declaration's name back
        self._prefixes: dict[str, int] = {}  # proper '/'-prefixes of names -> count
        self._collections: dict[str, list] = {}
        self._scope = ""
        # Bookkeeping for the initializer (see _plan.py), keyed by id(node) with the
        # node kept alive alongside: the first variable (in creation order) that uses
        # a random expression owns its key; how many variables use each node; which
        # variables are read by others through initialized_value().
        self._random_owner: dict[int, tuple[object, str, int]] = {}
        self._node_users: dict[int, tuple[object, int]] = {}
        self._referenced: set[str] = set()
        self._lock = threading.RLock()

    # -- default graph -------------------------------------------------------
    @contextlib.contextmanager
    def as_default(self) -> Iterator[Graph]:
        """Makes this graph the default graph inside the `with` block."""
        _stack().append(self)
        try:
            yield self
        finally:
            _stack().pop()

    # -- names ---------------------------------------------------------------
    @contextlib.contextmanager
    def name_scope(self, name: str | None) -> Iterator[str]:
        """TensorFlow 1.x `name_scope`: prefixes names declared inside with `name/`.

        A scope name that is already used is made unique (`layer1_1`), as TensorFlow
        does; a name ending in `/` re-enters that exact scope; `None` or `""` clears.
        """
        old = self._scope
        if name is None or name == "":
            new = ""
        elif name.endswith("/"):
            new = check_scope(name[:-1])
        else:
            check_scope(name)
            full = f"{old}/{name}" if old else name
            with self._lock:
                new = unique_name(full, self._names_in_use)
        self._scope = new
        try:
            yield new + "/" if new else ""
        finally:
            self._scope = old

    def _register(self, var: Variable, name: str | None) -> str:
        """Gives `var` its final, unique name and adds it to the graph."""
        base = "Variable" if name is None else name
        if not isinstance(base, str):
            raise InvalidNameError(
                f"Variable name must be a str, got {type(base).__name__} {base!r}. "
                "Pass name='my_variable'."
            )
        check_name(base)
        full = f"{self._scope}/{base}" if self._scope else base
        with self._lock:
            undo: list = []
            final = unique_name(full, self._names_in_use, undo)
            try:
                self._check_free(final)
            except BaseException:
                release_names(self._names_in_use, undo)
                raise
            parts = final.split("/")
            for i in range(1, len(parts)):
                prefix = "/".join(parts[:i])
                self._prefixes[prefix] = self._prefixes.get(prefix, 0) + 1
            self._variables[final] = var
            self._name_undo[final] = undo
        return final

    def _check_free(self, final: str) -> None:
        """Raises when `final` cannot be a variable name next to the others."""
        check_name(final)
        if final in self._prefixes:
            below = sorted(n for n in self._variables if n.startswith(final + "/"))
            raise InvalidNameError(
                f"Variable name {final!r} is already the scope of {below[0]!r}: a "
                "checkpoint nests names on '/', so one name cannot be both a "
                "variable and a scope. Rename one of them, e.g. "
                f"{final + '/' + final.rsplit('/', 1)[-1]!r}."
            )
        parts = final.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in self._variables:
                raise InvalidNameError(
                    f"Variable name {final!r} puts it inside {prefix!r}, which is "
                    "already a variable: a checkpoint nests names on '/', so one "
                    "name cannot be both a variable and a scope. Rename one of them."
                )

    def _unregister(self, var: Variable) -> None:
        """Undoes `_register` for a declaration that failed afterwards."""
        with self._lock:
            if self._variables.get(var.name) is not var:
                return
            del self._variables[var.name]
            release_names(self._names_in_use, self._name_undo.pop(var.name, []))
            parts = var.name.split("/")
            for i in range(1, len(parts)):
                prefix = "/".join(parts[:i])
                self._prefixes[prefix] -= 1
                if not self._prefixes[prefix]:
                    del self._prefixes[prefix]

    def _note_expression(self, var: Variable) -> None:
        """Records which random nodes `var` owns and which nodes it shares."""
        with self._lock:
            self._name_undo.pop(var.name, None)  # the declaration succeeded
            position = 0
            for node in walk(var.initial_value):
                nid = id(node)
                count = self._node_users.get(nid, (node, 0))[1]
                self._node_users[nid] = (node, count + 1)
                ref = getattr(node, "variable", None)
                if ref is not None:
                    self._referenced.add(ref.name)
                if node.needs_key:
                    if nid not in self._random_owner:
                        self._random_owner[nid] = (node, var.name, position)
                    position += 1

    def _add_to_collections(self, var: Variable, collections: list[str]) -> None:
        with self._lock:
            for c in dict.fromkeys(collections):
                self._collections.setdefault(c, []).append(var)

    # -- queries -------------------------------------------------------------
    def get_collection(self, name: str, scope: str | None = None) -> list:
        """The items of collection `name` in creation order, optionally filtered by
        a name-scope prefix (as TensorFlow's `scope=` argument, a `re.match`)."""
        items = list(self._collections.get(name, ()))
        if scope is not None:
            import re

            pattern = re.compile(scope)
            items = [v for v in items if pattern.match(getattr(v, "name", ""))]
        return items

    def add_to_collection(self, name: str, value: object) -> None:
        """Adds `value` to collection `name`."""
        with self._lock:
            self._collections.setdefault(name, []).append(value)

    def get_all_collection_keys(self) -> list[str]:
        return list(self._collections)

    def get_variable(self, name: str) -> Variable:
        """The variable called `name` in this graph."""
        try:
            return self._variables[name]
        except KeyError:
            from ._errors import NotFoundError, close_names

            raise NotFoundError(
                f"No variable named {name!r} in this graph "
                f"({len(self._variables)} variables).{close_names(name, self._variables)}"
            ) from None

    def _lookup(self, name: str) -> Variable | None:
        return self._variables.get(name)

    @property
    def variables(self) -> list[Variable]:
        """Every variable of this graph, in creation order."""
        return list(self._variables.values())

    def __repr__(self) -> str:
        return f"<vs.Graph with {len(self._variables)} variables at {id(self):#x}>"


_local = threading.local()
_global_default: list[Graph] = [Graph()]


def _stack() -> list[Graph]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def get_default_graph() -> Graph:
    """The graph new variables register in: the innermost `as_default()` graph of
    this thread, else the global default graph."""
    stack = _stack()
    return stack[-1] if stack else _global_default[0]


def reset_default_graph() -> None:
    """Replaces the global default graph by a fresh, empty one.

    Raises:
      GraphError: inside a `with graph.as_default():` block, as in TensorFlow.
    """
    if _stack():
        raise GraphError(
            "reset_default_graph() was called inside a `with graph.as_default():` "
            "block. Call it outside every such block."
        )
    _global_default[0] = Graph()


@contextlib.contextmanager
def name_scope(name: str | None) -> Iterator[str]:
    """`get_default_graph().name_scope(name)`: prefixes variable names with `name/`.

    >>> with vs.name_scope("layer1"):
    ...     w = vs.Variable(vs.zeros([2]), name="w")
    >>> w.name
    'layer1/w'
    """
    with get_default_graph().name_scope(name) as scope:
        yield scope


def global_variables(graph: Graph | None = None) -> list:
    """Variables in the `GLOBAL_VARIABLES` collection, in creation order."""
    return (graph or get_default_graph()).get_collection(GraphKeys.GLOBAL_VARIABLES)


def trainable_variables(graph: Graph | None = None) -> list:
    """Variables in the `TRAINABLE_VARIABLES` collection, in creation order."""
    return (graph or get_default_graph()).get_collection(GraphKeys.TRAINABLE_VARIABLES)


def local_variables(graph: Graph | None = None) -> list:
    """Variables in the `LOCAL_VARIABLES` collection, in creation order."""
    return (graph or get_default_graph()).get_collection(GraphKeys.LOCAL_VARIABLES)
