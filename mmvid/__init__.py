"""mmvid: video understanding and generation with LLMs through compact video tokenizers."""

__version__ = "0.1.0"
