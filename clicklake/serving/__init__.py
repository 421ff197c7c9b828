"""The REST API (`clicklake serve`): predictions with serve/skip decisions, and user profiles."""

from clicklake.serving.app import ServingConfig, create_app, lake_app
from clicklake.serving.model import LoadedModel, ModelSlot
from clicklake.serving.sources import LakeFeatures, OnlineFeatures

__all__ = ["LakeFeatures", "LoadedModel", "ModelSlot", "OnlineFeatures", "ServingConfig",
           "create_app", "lake_app"]
