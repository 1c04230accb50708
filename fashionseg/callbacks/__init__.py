from fashionseg.callbacks.epoch_seed import EpochSeed
from fashionseg.callbacks.finite_loss import FiniteLossGuard, NonFiniteLossError

__all__ = ["EpochSeed", "FiniteLossGuard", "NonFiniteLossError"]
