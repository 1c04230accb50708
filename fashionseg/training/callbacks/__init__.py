"""Lightning callbacks of a training run (conf/callbacks/), each switched on by config."""

from fashionseg.training.callbacks.checkpoint import RunCheckpoint
from fashionseg.training.callbacks.crf_layer import CRFLayerMonitor
from fashionseg.training.callbacks.epoch_seed import EpochSeed
from fashionseg.training.callbacks.finite_loss import FiniteLossGuard, NonFiniteLossError
from fashionseg.training.callbacks.images import PredictionImages
from fashionseg.training.callbacks.loss_switch import LossSwitch

__all__ = ["CRFLayerMonitor", "EpochSeed", "FiniteLossGuard", "LossSwitch", "NonFiniteLossError", "PredictionImages",
           "RunCheckpoint"]
