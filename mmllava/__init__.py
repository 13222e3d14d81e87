"""mmllava: fine-tune multimodal LLMs (LLaVA, InternVL2) from configs."""

__version__ = "0.1.0"
