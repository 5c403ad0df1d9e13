"""Lazy initializer expressions with static shape and dtype.

An expression is a small DAG of nodes. Building one computes no array: shapes and
dtypes come from abstract evaluation (`jax.eval_shape`), so a broadcasting mistake
is found at declaration. Values are computed only inside the compiled initializer
(`_init.py`), which asks its evaluation context for the random key of each random
leaf and for the value of each referenced variable.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import InitializationError, ShapeError

Shape = tuple[int, ...]


def _numeric(dtype: np.dtype) -> bool:
    """Numeric or bool, including ml_dtypes (bfloat16, float8: NumPy kind 'V')."""
    return dtype != object and dtype.kind not in "USMm" and dtype.type is not np.void


def _canonical_dtype(dtype: Any) -> np.dtype:
    return np.dtype(jax.dtypes.canonicalize_dtype(np.dtype(dtype)))


def _shape(shape: Any, where: str) -> Shape:
    if isinstance(shape, numbers.Integral):
        shape = (shape,)
    try:
        out = tuple(int(d) for d in shape)
    except TypeError:
        raise ShapeError(
            f"{where}: shape must be a sequence of ints, got {shape!r}. "
            "Pass e.g. [784, 200]."
        ) from None
    if any(d < 0 for d in out):
        raise ShapeError(f"{where}: shape {out} has a negative dimension.")
    return out


class Expr:
    """A lazy initial value with a static `.shape` and `.dtype`.

    Supports `+ - * / ** @`, unary `-`, indexing, `.T`, `.reshape(...)` and
    `.astype(...)`; `vs.apply(fn, *exprs)` applies any JAX function.
    """

    shape: Shape
    dtype: np.dtype
    needs_key = False  # True for random leaves
    seed: int | None = None

    # -- graph structure -----------------------------------------------------
    def _children(self) -> tuple[Expr, ...]:
        return ()

    def _compute(self, key: jax.Array | None, *args: jax.Array) -> jax.Array:
        raise NotImplementedError

    def _static(self) -> tuple:
        """What, besides the children, determines the computation (for grouping)."""
        return (self.shape, str(self.dtype))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __repr__(self) -> str:
        return f"<vs.{type(self).__name__} shape={self.shape} dtype={self.dtype}>"

    # -- arithmetic ----------------------------------------------------------
    def __add__(self, o):
        return _binary(jnp.add, "+", self, o)

    def __radd__(self, o):
        return _binary(jnp.add, "+", o, self)

    def __sub__(self, o):
        return _binary(jnp.subtract, "-", self, o)

    def __rsub__(self, o):
        return _binary(jnp.subtract, "-", o, self)

    def __mul__(self, o):
        return _binary(jnp.multiply, "*", self, o)

    def __rmul__(self, o):
        return _binary(jnp.multiply, "*", o, self)

    def __truediv__(self, o):
        return _binary(jnp.true_divide, "/", self, o)

    def __rtruediv__(self, o):
        return _binary(jnp.true_divide, "/", o, self)

    def __pow__(self, o):
        return _binary(jnp.power, "**", self, o)

    def __rpow__(self, o):
        return _binary(jnp.power, "**", o, self)

    def __matmul__(self, o):
        return _binary(jnp.matmul, "@", self, o)

    def __rmatmul__(self, o):
        return _binary(jnp.matmul, "@", o, self)

    def __neg__(self):
        return Op(jnp.negative, (self,), name="neg")

    def __pos__(self):
        return self

    def __abs__(self):
        return Op(jnp.abs, (self,), name="abs")

    def __getitem__(self, index):
        index = _static_index(index)
        return Op(lambda x: x[index], (self,), name="getitem", static=(repr(index),))

    @property
    def T(self) -> Expr:  # noqa: N802 - NumPy's name
        return Op(jnp.transpose, (self,), name="T")

    def reshape(self, *shape) -> Expr:
        if len(shape) == 1 and not isinstance(shape[0], numbers.Integral):
            shape = tuple(shape[0])
        shape = tuple(int(d) for d in shape)
        return Op(lambda x: jnp.reshape(x, shape), (self,), name="reshape", static=shape)

    def astype(self, dtype) -> Expr:
        dtype = _canonical_dtype(dtype)
        if dtype == self.dtype:
            return self
        return Op(lambda x: x.astype(dtype), (self,), name="astype", static=(str(dtype),))

    def __bool__(self):
        raise InitializationError(
            "An initializer expression has no value at declaration, so it cannot be "
            "used as a bool (in `if`, `and`, `or`). Use vs.apply(fn, expr) with "
            "jnp.where for data-dependent values."
        )

    __array_priority__ = 1000  # so numpy_array * expr calls Expr.__rmul__


def _static_index(index):
    items = index if isinstance(index, tuple) else (index,)
    for item in items:
        ok = (
            item is None
            or item is Ellipsis
            or isinstance(item, (numbers.Integral, slice))
            or (isinstance(item, (np.ndarray, list)) and np.asarray(item).dtype != object)
        )
        if not ok:
            raise InitializationError(
                f"Cannot index an initializer expression with {item!r}: only ints, "
                "slices, None, ... and NumPy index arrays are supported. Use "
                "vs.apply(fn, expr) for other indexing."
            )
    return tuple(np.asarray(i) if isinstance(i, list) else i for i in items)


class Op(Expr):
    """`fn(*children)`, with shape and dtype found by `jax.eval_shape`."""

    def __init__(self, fn: Callable, args: Sequence[Expr], name: str, static: tuple = ()):
        self.fn = fn
        self.args = tuple(args)
        self.name = name
        self.static = static
        specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in self.args]
        try:
            out = jax.eval_shape(fn, *specs)
        except Exception as e:  # noqa: BLE001 - re-raised with context
            shapes = ", ".join(f"{a.shape} {a.dtype}" for a in self.args)
            raise ShapeError(
                f"Initializer expression {name!r} cannot be applied to operands of "
                f"shape/dtype {shapes}: {type(e).__name__}: {e}. Reshape or cast the "
                "operands so that they broadcast (NumPy rules)."
            ) from None
        if not isinstance(out, jax.ShapeDtypeStruct):
            raise InitializationError(
                f"vs.apply: function {getattr(fn, '__name__', fn)!r} must return one "
                f"array, got the structure {jax.tree.structure(out)}. Return a "
                "single jax.Array."
            )
        self.shape = tuple(out.shape)
        self.dtype = np.dtype(out.dtype)

    def _children(self):
        return self.args

    def _compute(self, key, *args):
        return self.fn(*args)

    def _static(self):
        # Functions are compared by identity: two lambdas never group together.
        fn_id = self.name if self.name not in ("apply",) else id(self.fn)
        return (self.name, fn_id, self.static, self.shape, str(self.dtype))


class _PyScalar(Expr):
    """A Python number inside an expression: weakly typed, as in JAX."""

    def __init__(self, value):
        self.value = value
        self.shape = ()
        self.dtype = np.dtype(jnp.result_type(value))

    def _compute(self, key):
        return self.value

    def _static(self):
        return ("pyscalar", type(self.value).__name__, self.value)


def _binary(fn, sym: str, a, b) -> Expr:
    a_expr, b_expr = _as_operand(a), _as_operand(b)
    # Python scalars stay weakly typed (w * 2.0 keeps w's dtype), so they are
    # closed over rather than turned into float32 constants.
    if isinstance(a_expr, _PyScalar):
        v = a_expr.value
        return Op(lambda y: fn(v, y), (b_expr,), name=sym, static=("l", v))
    if isinstance(b_expr, _PyScalar):
        v = b_expr.value
        return Op(lambda x: fn(x, v), (a_expr,), name=sym, static=("r", v))
    return Op(fn, (a_expr, b_expr), name=sym)


def _as_operand(x) -> Expr:
    if isinstance(x, Expr):
        return x
    if isinstance(x, (bool, numbers.Number)) and not isinstance(x, np.generic):
        return _PyScalar(x)
    from ._variable import Variable  # a variable in arithmetic means its initial value

    if isinstance(x, Variable):
        return x.initialized_value()
    return Const(x)


class Const(Expr):
    """A concrete value (Python, NumPy or JAX), passed into the compiled program."""

    def __init__(self, value, dtype=None):
        if isinstance(value, jax.Array):
            arr = value if dtype is None else value.astype(_canonical_dtype(dtype))
        else:
            try:
                np_value = np.asarray(value)
            except Exception as e:  # noqa: BLE001
                raise InitializationError(
                    f"Cannot use {type(value).__name__} {value!r} as an initial value: "
                    f"{e}. Pass an initializer expression, an array or a number."
                ) from None
            if not _numeric(np_value.dtype):
                raise InitializationError(
                    f"Cannot use {value!r} (NumPy dtype {np_value.dtype}) as an initial "
                    "value: only numeric and bool arrays can be variables."
                )
            if dtype is None:
                # TensorFlow: Python floats are float32, Python ints int32.
                if not isinstance(value, np.ndarray | np.generic):
                    kind = np_value.dtype.kind
                    if kind == "f":
                        np_value = np_value.astype(np.float32)
                    elif kind in "iu":
                        np_value = np_value.astype(np.int32)
                    elif kind == "c":
                        np_value = np_value.astype(np.complex64)
                target = _canonical_dtype(np_value.dtype)
            else:
                target = _canonical_dtype(dtype)
            arr = np_value.astype(target, copy=False)
        self.value = arr
        self.shape = tuple(arr.shape)
        self.dtype = np.dtype(arr.dtype)

    def _compute(self, key):
        return self.value

    def _static(self):
        return ("const", id(self))


class _Leaf(Expr):
    def __init__(self, shape, dtype, where: str):
        self.shape = _shape(shape, where)
        self.dtype = _canonical_dtype(dtype)


class Fill(_Leaf):
    """A constant-filled array: `zeros`, `ones`, `fill`."""

    def __init__(self, shape, value, dtype, where="vs.fill"):
        super().__init__(shape, dtype, where)
        self.value = value

    def _compute(self, key):
        return jnp.full(self.shape, self.value, self.dtype)

    def _static(self):
        return ("fill", self.value, self.shape, str(self.dtype))


class _Random(_Leaf):
    needs_key = True

    def __init__(self, shape, dtype, seed, where):
        super().__init__(shape, dtype, where)
        if seed is not None and not isinstance(seed, numbers.Integral):
            raise InitializationError(f"{where}: seed must be an int or None, got {seed!r}.")
        self.seed = None if seed is None else int(seed)
        if not jnp.issubdtype(self.dtype, jnp.floating) and not isinstance(
            self, RandomUniform
        ):
            raise InitializationError(
                f"{where}: dtype must be a floating type, got {self.dtype}."
            )


class RandomNormal(_Random):
    def __init__(self, shape, mean, stddev, dtype, seed, truncated):
        where = "vs.truncated_normal" if truncated else "vs.random_normal"
        super().__init__(shape, dtype, seed, where)
        self.mean, self.stddev, self.truncated = mean, stddev, truncated

    def _compute(self, key):
        if self.truncated:
            # TensorFlow's truncated_normal redraws values beyond 2 standard deviations.
            z = jax.random.truncated_normal(key, -2.0, 2.0, self.shape, self.dtype)
        else:
            z = jax.random.normal(key, self.shape, self.dtype)
        return (z * jnp.asarray(self.stddev, self.dtype) + jnp.asarray(self.mean, self.dtype))

    def _static(self):
        return ("normal", self.truncated, self.mean, self.stddev, self.shape, str(self.dtype))


class RandomUniform(_Random):
    def __init__(self, shape, minval, maxval, dtype, seed):
        super().__init__(shape, dtype, seed, "vs.random_uniform")
        if jnp.issubdtype(self.dtype, jnp.integer):
            if maxval is None:
                raise InitializationError(
                    f"vs.random_uniform: maxval is required for the integer dtype "
                    f"{self.dtype}, as in TensorFlow. Pass maxval=N."
                )
        elif not jnp.issubdtype(self.dtype, jnp.floating):
            raise InitializationError(
                f"vs.random_uniform: dtype must be floating or integer, got {self.dtype}."
            )
        self.minval = minval
        self.maxval = 1 if maxval is None else maxval

    def _compute(self, key):
        if jnp.issubdtype(self.dtype, jnp.integer):
            return jax.random.randint(key, self.shape, self.minval, self.maxval, self.dtype)
        return jax.random.uniform(key, self.shape, self.dtype, self.minval, self.maxval)

    def _static(self):
        return ("uniform", self.minval, self.maxval, self.shape, str(self.dtype))


class CallableInit(_Random):
    """A JAX-style initializer `fn(key, shape, dtype) -> array`."""

    def __init__(self, fn, shape, dtype, seed=None):
        _Leaf.__init__(self, shape, dtype, "initializer callable")
        self.seed = seed
        self.fn = fn
        try:
            out = jax.eval_shape(lambda k: fn(k, self.shape, self.dtype), jax.random.key(0))
        except Exception as e:  # noqa: BLE001
            raise InitializationError(
                f"Initializer {getattr(fn, '__name__', fn)!r} failed for shape "
                f"{self.shape} and dtype {self.dtype}: {type(e).__name__}: {e}"
            ) from None
        if tuple(out.shape) != self.shape:
            raise ShapeError(
                f"Initializer {getattr(fn, '__name__', fn)!r} returned shape "
                f"{tuple(out.shape)} for the requested shape {self.shape}."
            )
        self.dtype = np.dtype(out.dtype)

    def _compute(self, key):
        return self.fn(key, self.shape, self.dtype)

    def _static(self):
        return ("callable", id(self.fn), self.shape, str(self.dtype))


class VarRef(Expr):
    """`variable.initialized_value()`: the store's value if it has one, else the
    variable's own initial value computed in the same initializer call."""

    def __init__(self, variable):
        self.variable = variable
        self.shape = variable.shape
        self.dtype = variable.dtype

    def _static(self):
        return ("ref", id(self.variable))

    def __repr__(self):
        return f"<vs.initialized_value of {self.variable.name!r}>"


class Apply(Op):
    """`vs.apply(fn, *exprs)`."""

    def __init__(self, fn, args):
        super().__init__(fn, args, name="apply")


def walk(root: Expr) -> list[Expr]:
    """The distinct nodes under `root` in post-order (children first, left to
    right), not descending into referenced variables' expressions."""
    out: list[Expr] = []
    seen: set[int] = set()
    stack: list[tuple[Expr, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            out.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        for child in reversed(node._children()):
            if id(child) not in seen:
                stack.append((child, False))
    return out


# -- public constructors --------------------------------------------------------
def zeros(shape, dtype=jnp.float32) -> Expr:
    """An all-zeros initial value. >>> vs.zeros([200])"""
    return Fill(shape, 0, dtype, "vs.zeros")


def ones(shape, dtype=jnp.float32) -> Expr:
    """An all-ones initial value. >>> vs.ones([3, 3])"""
    return Fill(shape, 1, dtype, "vs.ones")


def fill(shape, value, dtype=None) -> Expr:
    """An array filled with `value` (dtype from the value, as TensorFlow does)."""
    if dtype is None:
        dtype = Const(value).dtype
    return Fill(shape, value, dtype, "vs.fill")


def constant(value, dtype=None, shape=None) -> Expr:
    """A constant initial value; with `shape`, a scalar is filled and an array of the
    same size reshaped, as `tf.constant` does."""
    c = Const(value, dtype)
    if shape is None:
        return c
    shape = _shape(shape, "vs.constant")
    if c.shape == shape:
        return c
    if c.size == 1:
        return Fill(shape, np.asarray(c.value).reshape(()).item(), c.dtype, "vs.constant")
    if c.size == int(np.prod(shape, dtype=np.int64)):
        return c.reshape(shape)
    raise ShapeError(
        f"vs.constant: a value of shape {c.shape} ({c.size} elements) cannot fill the "
        f"shape {shape}. Pass a scalar or a value with {int(np.prod(shape))} elements."
    )


def random_normal(shape, mean=0.0, stddev=1.0, dtype=jnp.float32, seed=None) -> Expr:
    """Normally distributed initial values. >>> vs.random_normal([784, 200], stddev=0.35)"""
    return RandomNormal(shape, mean, stddev, dtype, seed, truncated=False)


def truncated_normal(shape, mean=0.0, stddev=1.0, dtype=jnp.float32, seed=None) -> Expr:
    """Normal values cut at 2 standard deviations (redrawn), as TensorFlow does."""
    return RandomNormal(shape, mean, stddev, dtype, seed, truncated=True)


def random_uniform(shape, minval=0, maxval=None, dtype=jnp.float32, seed=None) -> Expr:
    """Uniform values in `[minval, maxval)`; `maxval` defaults to 1 for floats."""
    return RandomUniform(shape, minval, maxval, dtype, seed)


def glorot_uniform(shape, dtype=jnp.float32, seed=None) -> Expr:
    """Glorot (Xavier) uniform values, fans computed as TensorFlow does."""
    return CallableInit(jax.nn.initializers.glorot_uniform(), shape, dtype, seed)


def glorot_normal(shape, dtype=jnp.float32, seed=None) -> Expr:
    """Glorot (Xavier) truncated-normal values, fans computed as TensorFlow does."""
    return CallableInit(jax.nn.initializers.glorot_normal(), shape, dtype, seed)


def apply(fn: Callable[..., jax.Array], *exprs) -> Expr:
    """Applies any JAX function to expressions, lazily.

    >>> w = vs.Variable(vs.apply(jnp.tanh, vs.random_normal([3])), name="w")
    """
    if not callable(fn):
        raise InitializationError(f"vs.apply: the first argument must be callable, got {fn!r}.")
    return Apply(fn, [_as_operand(e) for e in exprs])


def as_expr(value, *, shape=None, dtype=None, where="initial_value") -> Expr:
    """Turns any accepted `initial_value` into an expression."""
    if isinstance(value, Expr):
        return value
    from ._variable import Variable

    if isinstance(value, Variable):
        return value.initialized_value()
    if callable(value) and not isinstance(value, (np.ndarray, jax.Array)):
        if shape is None:
            raise InitializationError(
                f"{where}: the initializer callable {getattr(value, '__name__', value)!r} "
                "needs the variable's shape. Pass shape=(...) (and dtype=, default "
                "float32) to vs.Variable."
            )
        return CallableInit(value, shape, jnp.float32 if dtype is None else dtype)
    return Const(value, dtype)
