from mmllava.models.internvl import InternVLModel
from mmllava.models.llava import LLaVAModel

__all__ = ["InternVLModel", "LLaVAModel"]
