"""Datasets: fetching (`dvt fetch`), on-disk formats, and loading splits for the later stages."""

from dvt.data.info import DatasetInfo, dataset_info

__all__ = ["DatasetInfo", "dataset_info"]
