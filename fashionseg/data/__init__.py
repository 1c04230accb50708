"""Data sets, their label maps and transforms, the seeded split, and the Lightning data modules."""

from fashionseg.data.datamodule import FashionDataModule
from fashionseg.data.dataset import LabelMap, SegmentationDataset, scan_dataset
from fashionseg.data.multiset import MultiSetDataModule, primary_data_config
from fashionseg.data.split import split_indices
from fashionseg.data.stored import checkpoint_datamodule

__all__ = ["FashionDataModule", "LabelMap", "MultiSetDataModule", "SegmentationDataset", "checkpoint_datamodule",
           "primary_data_config", "scan_dataset", "split_indices"]
