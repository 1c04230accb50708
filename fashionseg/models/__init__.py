from fashionseg.models.deeplab import SmpSegmenter, deeplabv3, deeplabv3plus
from fashionseg.models.u2net import RSU, U2Net, u2net, u2netp

__all__ = ["RSU", "SmpSegmenter", "U2Net", "deeplabv3", "deeplabv3plus", "u2net", "u2netp"]
