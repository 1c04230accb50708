from fashionseg.data.datamodule import FashionDataModule
from fashionseg.data.dataset import LabelMap, SegmentationDataset, scan_dataset
from fashionseg.data.multiset import MultiSetDataModule, primary_data_config
from fashionseg.data.split import split_indices

__all__ = ["FashionDataModule", "LabelMap", "MultiSetDataModule", "SegmentationDataset", "primary_data_config",
           "scan_dataset", "split_indices"]
