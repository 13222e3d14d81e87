from mmllava.models.llava import LLaVAModel

__all__ = ["LLaVAModel"]
