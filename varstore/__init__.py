"""varstore: TensorFlow 1.x style variables, initialization and saving for JAX.

>>> import varstore as vs
>>> weights = vs.Variable(vs.random_normal([784, 200], stddev=0.35), name="weights")
>>> store = vs.initialize_all_variables()(jax.random.key(0))
"""

from typing import TYPE_CHECKING

# Cheap names (no JAX) are imported now; the rest on first use (PEP 562), so that the
# `varstore` command answers metadata questions without paying JAX's import.
from ._config import config as config
from ._errors import CheckpointError as CheckpointError
from ._errors import ExtraPathError as ExtraPathError
from ._errors import GraphError as GraphError
from ._errors import InitializationError as InitializationError
from ._errors import InvalidNameError as InvalidNameError
from ._errors import LeafMismatchError as LeafMismatchError
from ._errors import MissingPathError as MissingPathError
from ._errors import NotFoundError as NotFoundError
from ._errors import PlacementError as PlacementError
from ._errors import PytreeError as PytreeError
from ._errors import ShapeError as ShapeError
from ._errors import UninitializedError as UninitializedError
from ._errors import VarStoreError as VarStoreError

__version__ = "0.1.0.dev0"

# name -> private module it lives in (None: a public submodule of the same name)
_LAZY = {
    "Expr": "_expr",
    "apply": "_expr",
    "constant": "_expr",
    "fill": "_expr",
    "glorot_normal": "_expr",
    "glorot_uniform": "_expr",
    "ones": "_expr",
    "random_normal": "_expr",
    "random_uniform": "_expr",
    "truncated_normal": "_expr",
    "zeros": "_expr",
    "Graph": "_graph",
    "GraphKeys": "_graph",
    "get_default_graph": "_graph",
    "global_variables": "_graph",
    "local_variables": "_graph",
    "name_scope": "_graph",
    "reset_default_graph": "_graph",
    "trainable_variables": "_graph",
    "Initializer": "_init",
    "global_variables_initializer": "_init",
    "initialize_all_variables": "_init",
    "initialize_variables": "_init",
    "variables_initializer": "_init",
    "PlacementWarning": "_placement",
    "device": "_placement",
    "sharding_rules": "_placement",
    "assert_variables_initialized": "_report",
    "is_variable_initialized": "_report",
    "report_uninitialized_variables": "_report",
    "VarStore": "_store",
    "Variable": "_variable",
    "distributed": None,
    "train": None,
    "flax": None,
    "inspect_checkpoint": None,
}

if TYPE_CHECKING:  # what static tools and IDEs see: the same names, imported eagerly
    from ._expr import Expr as Expr
    from ._expr import apply as apply
    from ._expr import constant as constant
    from ._expr import fill as fill
    from ._expr import glorot_normal as glorot_normal
    from ._expr import glorot_uniform as glorot_uniform
    from ._expr import ones as ones
    from ._expr import random_normal as random_normal
    from ._expr import random_uniform as random_uniform
    from ._expr import truncated_normal as truncated_normal
    from ._expr import zeros as zeros
    from ._graph import Graph as Graph
    from ._graph import GraphKeys as GraphKeys
    from ._graph import get_default_graph as get_default_graph
    from ._graph import global_variables as global_variables
    from ._graph import local_variables as local_variables
    from ._graph import name_scope as name_scope
    from ._graph import reset_default_graph as reset_default_graph
    from ._graph import trainable_variables as trainable_variables
    from ._init import Initializer as Initializer
    from ._init import global_variables_initializer as global_variables_initializer
    from ._init import initialize_all_variables as initialize_all_variables
    from ._init import initialize_variables as initialize_variables
    from ._init import variables_initializer as variables_initializer
    from ._placement import PlacementWarning as PlacementWarning
    from ._placement import device as device
    from ._placement import sharding_rules as sharding_rules
    from ._report import assert_variables_initialized as assert_variables_initialized
    from ._report import is_variable_initialized as is_variable_initialized
    from ._report import report_uninitialized_variables as report_uninitialized_variables
    from ._store import VarStore as VarStore
    from ._variable import Variable as Variable
    from . import distributed as distributed
    from . import train as train
    from . import flax as flax
    from . import inspect_checkpoint as inspect_checkpoint


def __getattr__(name: str):
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'varstore' has no attribute {name!r}") from None
    import importlib

    if module is None:  # a submodule: importing it binds it on the package
        return importlib.import_module(f".{name}", __name__)
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CheckpointError",
    "Expr",
    "ExtraPathError",
    "Graph",
    "GraphError",
    "GraphKeys",
    "InitializationError",
    "Initializer",
    "InvalidNameError",
    "LeafMismatchError",
    "MissingPathError",
    "NotFoundError",
    "PlacementError",
    "PlacementWarning",
    "PytreeError",
    "ShapeError",
    "UninitializedError",
    "VarStore",
    "VarStoreError",
    "Variable",
    "apply",
    "assert_variables_initialized",
    "config",
    "distributed",
    "constant",
    "device",
    "fill",
    "get_default_graph",
    "global_variables",
    "global_variables_initializer",
    "glorot_normal",
    "glorot_uniform",
    "initialize_all_variables",
    "initialize_variables",
    "inspect_checkpoint",
    "is_variable_initialized",
    "local_variables",
    "name_scope",
    "ones",
    "random_normal",
    "random_uniform",
    "report_uninitialized_variables",
    "reset_default_graph",
    "sharding_rules",
    "train",
    "trainable_variables",
    "truncated_normal",
    "variables_initializer",
    "zeros",
]
