"""Inference: a checkpoint read and its network rebuilt without training code, the one logits path
(crop, resize, test-time augmentation), the Predictor (photos in, label maps out) and ONNX Runtime."""

from fashionseg.inference.checkpoint import TrainedNetwork, load_network, read_checkpoint
from fashionseg.inference.logits import check_scales, crop_and_resize, network_logits, scaled_size
from fashionseg.inference.onnx import OnnxNetwork, OnnxRunner
from fashionseg.inference.predictor import VARIANTS, Predictor

__all__ = ["VARIANTS", "OnnxNetwork", "OnnxRunner", "Predictor", "TrainedNetwork", "check_scales", "crop_and_resize",
           "load_network", "network_logits", "read_checkpoint", "scaled_size"]
