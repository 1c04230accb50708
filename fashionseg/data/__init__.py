from fashionseg.data.datamodule import FashionDataModule
from fashionseg.data.dataset import LABEL_FILES, SegmentationDataset, scan_dataset
from fashionseg.data.split import split_indices

__all__ = ["FashionDataModule", "LABEL_FILES", "SegmentationDataset", "scan_dataset", "split_indices"]
