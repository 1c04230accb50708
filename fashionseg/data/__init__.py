from fashionseg.data.datamodule import FashionDataModule
from fashionseg.data.dataset import LabelMap, SegmentationDataset, scan_dataset
from fashionseg.data.split import split_indices

__all__ = ["FashionDataModule", "LabelMap", "SegmentationDataset", "scan_dataset", "split_indices"]
