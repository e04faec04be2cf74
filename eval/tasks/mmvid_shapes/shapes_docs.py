"""Data of the mmvid_shapes_* lm-eval tasks, built on the spot from the synthetic world (no files, no
download).

lm-eval loads this file by path for the `!function` tags of the YAML files beside it; the documents
themselves are made by `mmvid.evaluation.lm_eval_bench` (see its docstring for what they contain).
"""

from datasets import Dataset

from mmvid.evaluation.lm_eval_bench import caption_choice_docs, caption_text_docs


def captions_dataset(num_scenes: int = 500, fewshot_scenes: int = 100, **metadata) -> dict:
    """mmvid_shapes_captions: test items from the world's test scenes, few-shot examples from train scenes."""
    return {"train": Dataset.from_list(caption_choice_docs("train", int(fewshot_scenes))),
            "test": Dataset.from_list(caption_choice_docs("test", int(num_scenes)))}


def captions_ppl_dataset(num_scenes: int = 500, **metadata) -> dict:
    """mmvid_shapes_captions_ppl: one document (a scene's three captions) per test scene."""
    return {"test": Dataset.from_list(caption_text_docs("test", int(num_scenes)))}
