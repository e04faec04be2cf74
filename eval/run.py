"""Evaluate a trained model: one runner for every mmvid benchmark.

    python eval/run.py --bench tv_align         # runs/sft-default/final on the world's test split
    python eval/run.py --bench tv_align,fewshot --model runs/x/final --limit 200 --output results.json
    python eval/run.py --bench tv_align --mode both --log-samples
    python eval/run.py --bench recon --tokenizer runs/tokenizer-vtok_base/final
    python eval/run.py --bench tokens
    python eval/run.py --bench lm_eval --tasks mmvid_shapes_captions --num_fewshot 0
    python eval/run.py --help
"""

import sys

from mmvid.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main())
