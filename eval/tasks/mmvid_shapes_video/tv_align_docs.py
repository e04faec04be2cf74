"""Functions of the mmvid_shapes_tv_align* lmms-eval tasks.

lmms-eval loads this file by path for the `!function` tags of the YAML files beside it; the logic is in
`mmvid.evaluation.lmms_plugin` (see its docstring).
"""

from lmms_eval.api.task import ConfigurableTask

from mmvid.evaluation.lmms_plugin import (
    answer_index,
    choice_metrics,
    doc_to_visual,
    generation_metrics,
    letter_prompt,
    letters_of,
)

__all__ = ["ChoiceTask", "answer_index", "cloze_results", "doc_to_visual", "generation_results",
           "letter_prompt", "letter_results", "letters_of"]


class ChoiceTask(ConfigurableTask):
    """A multiple-choice task that chat models get too. lmms-eval 0.7.3 builds every task of a chat model
    (`is_simple = False`) as a ConfigurableMessagesTask, which makes generation requests only; a YAML
    task with a `class:` key is built from that class whatever the model, and this one is lmms-eval's
    plain ConfigurableTask, whose loglikelihood requests every lmms-eval model takes."""

    def __init__(self, config: dict):
        super().__init__(config={k: v for k, v in config.items() if k != "class"})


def cloze_results(doc: dict, results: list) -> dict:
    return choice_metrics(doc, results, doc["options"])


def letter_results(doc: dict, results: list) -> dict:
    return choice_metrics(doc, results, letters_of(doc))


def generation_results(doc: dict, results: list) -> dict:
    return generation_metrics(doc, results)
