"""Kept for importers of the old module: the model description lives in the repository contract."""

from service.contract import ModelInfo

__all__ = ["ModelInfo"]
