"""`vs.Variable`: a declaration (name, initial-value expression, shape, dtype,
placement, flags). It holds no array: values live in a `vs.VarStore`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _placement
from ._errors import InitializationError, ShapeError
from ._expr import Expr, VarRef, _canonical_dtype, _shape, as_expr
from ._graph import Graph, GraphKeys, get_default_graph


class Variable:
    """A TensorFlow 1.x style variable declaration.

    Args:
      initial_value: an initializer expression (`vs.random_normal(...)`), another
        variable's `initialized_value()` (or arithmetic on it), a Python scalar,
        NumPy or JAX array, or a JAX initializer `(key, shape, dtype) -> array`
        (which needs `shape=`).
      name: the name; `None` gives `"Variable"`; taken names get `_1`, `_2`, ...
      trainable: whether it joins the `TRAINABLE_VARIABLES` collection.
      collections: the collections to join (default `[GLOBAL_VARIABLES]`).
      validate_shape: when False, assignments may change its shape.
      dtype: casts the initial value to this dtype.
      shape: the static shape; required for initializer callables.
      device: a placement that overrides the `vs.device` context.

    Raises:
      InvalidNameError: for a name that cannot be saved.
      ShapeError: when `shape=` disagrees with the initial value.
      PlacementError: for a placement this host cannot honour.

    >>> weights = vs.Variable(vs.random_normal([784, 200], stddev=0.35), name="weights")
    >>> weights.shape
    (784, 200)
    """

    def __init__(
        self,
        initial_value: Any,
        name: str | None = None,
        *,
        trainable: bool = True,
        collections: Sequence[str] | None = None,
        validate_shape: bool = True,
        dtype: Any = None,
        shape: Sequence[int] | None = None,
        device: Any = None,
    ) -> None:
        if initial_value is None:
            raise InitializationError(
                f"Variable {name!r}: initial_value is required (got None). Pass e.g. "
                "vs.zeros([n]) or an array."
            )
        where = f"Variable {name or 'Variable'!r}"
        want_shape = None if shape is None else _shape(shape, where)
        expr = as_expr(initial_value, shape=want_shape, dtype=dtype, where=where)
        if dtype is not None:
            expr = expr.astype(_canonical_dtype(dtype))
        if want_shape is not None and want_shape != expr.shape:
            raise ShapeError(
                f"{where}: shape={want_shape} was given but the initial value has shape "
                f"{expr.shape}. Make them agree, or drop shape=."
            )
        if isinstance(collections, str):
            raise InitializationError(
                f"{where}: collections must be a list of names, got the string "
                f"{collections!r}. Pass [{collections!r}]."
            )
        self._expr = expr
        self._trainable = bool(trainable)
        self._validate_shape = bool(validate_shape)
        self._graph: Graph = get_default_graph()
        self._ref = VarRef(self)
        colls = [GraphKeys.GLOBAL_VARIABLES] if collections is None else list(collections)
        if self._trainable and GraphKeys.TRAINABLE_VARIABLES not in colls:
            colls.append(GraphKeys.TRAINABLE_VARIABLES)
        self._collections = tuple(colls)
        # The name is needed by device functions, so it is fixed before placement;
        # a placement error then unregisters nothing because nothing was added yet.
        self._name = name if name is not None else "Variable"
        self._sharding = None
        graph = self._graph
        final = graph._register(self, name)
        self._name = final
        try:
            self._sharding = _placement.resolve(self, device)
        except BaseException:
            graph._unregister(self)
            raise
        graph._add_to_collections(self, list(self._collections))
        graph._note_expression(self)

    # -- attributes ----------------------------------------------------------
    @property
    def name(self) -> str:
        """The final, unique name (no `:0` suffix)."""
        return self._name

    @property
    def shape(self) -> tuple[int, ...]:
        return self._expr.shape

    @property
    def dtype(self) -> np.dtype:
        return self._expr.dtype

    @property
    def trainable(self) -> bool:
        return self._trainable

    @property
    def validate_shape(self) -> bool:
        return self._validate_shape

    @property
    def device(self):
        """The resolved placement, a `jax.sharding.Sharding`."""
        return self._sharding

    @property
    def sharding(self):
        """Same as `.device`."""
        return self._sharding

    @property
    def graph(self) -> Graph:
        return self._graph

    @property
    def initial_value(self) -> Expr:
        """The initial-value expression itself (shared: using it in another variable
        gives that variable the very same values)."""
        return self._expr

    def initialized_value(self) -> Expr:
        """An expression for this variable's value: the store's value when the store
        passed to the initializer has it, else its own initial value."""
        return self._ref

    def get_shape(self) -> tuple[int, ...]:
        return self.shape

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __repr__(self) -> str:
        return (
            f"<vs.Variable {self._name!r} shape={self.shape} dtype={self.dtype}"
            f"{'' if self._trainable else ' trainable=False'}>"
        )

    __hash__ = object.__hash__

    def __eq__(self, other):
        return self is other
