"""mmvid: video understanding and generation with LLMs through compact video tokenizers."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `from mmvid import VideoLLM` without importing transformers on every `import mmvid`.
    if name in ("VideoLLM", "VideoLLMConfig"):
        from mmvid import videollm

        return getattr(videollm, name)
    raise AttributeError(f"module 'mmvid' has no attribute {name!r}")
