"""`vs.train`: TensorFlow 1.x's `tf.train` saving and restoring, on Orbax.

>>> saver = vs.train.Saver()
>>> path = saver.save(store, "/tmp/model.ckpt", global_step=1)
>>> store = saver.restore(vs.train.latest_checkpoint("/tmp"))
"""

from ._readers import CheckpointReader as CheckpointReader
from ._readers import CheckpointState as CheckpointState
from ._readers import NewCheckpointReader as NewCheckpointReader
from ._readers import get_checkpoint_state as get_checkpoint_state
from ._readers import latest_checkpoint as latest_checkpoint
from ._readers import list_variables as list_variables
from ._readers import load_checkpoint as load_checkpoint
from ._readers import load_variable as load_variable
from ._restore_plan import RestorePlan as RestorePlan
from ._restore_plan import plan_restore as plan_restore
from ._saver import Saver as Saver
from ._sources import checkpoint_exists as checkpoint_exists
from ._warmstart import init_from_checkpoint as init_from_checkpoint

__all__ = [
    "CheckpointReader",
    "CheckpointState",
    "NewCheckpointReader",
    "RestorePlan",
    "Saver",
    "checkpoint_exists",
    "get_checkpoint_state",
    "init_from_checkpoint",
    "latest_checkpoint",
    "list_variables",
    "load_checkpoint",
    "load_variable",
    "plan_restore",
]
