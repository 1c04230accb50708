from fashionseg.callbacks.checkpoint import RunCheckpoint
from fashionseg.callbacks.epoch_seed import EpochSeed
from fashionseg.callbacks.finite_loss import FiniteLossGuard, NonFiniteLossError
from fashionseg.callbacks.images import PredictionImages
from fashionseg.callbacks.loss_switch import LossSwitch
from fashionseg.callbacks.refinements import RefinementReport

__all__ = ["EpochSeed", "FiniteLossGuard", "LossSwitch", "NonFiniteLossError", "PredictionImages",
           "RefinementReport", "RunCheckpoint"]
