"""Supervised fine-tuning of a VideoLLM with DeepSpeed.

    deepspeed train/sft.py                                          # the built-in default, end to end on CPU
    deepspeed train/sft.py --config train/configs/default.yaml steps=400 out=runs/short
    deepspeed --num_gpus 2 train/sft.py --config train/configs/stage2_sft.yaml
    deepspeed --hostfile hostfile train/sft.py --config ...         # several machines
    python train/sft.py --help                                      # every key, its type and default

Re-running the same command after a kill resumes from the newest checkpoint in `out`.
"""

import sys

from mmvid.config import parse_config
from mmvid.sft.config import SFTConfig
from mmvid.sft.trainer import run

if __name__ == "__main__":
    argv = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]  # added by the deepspeed launcher
    run(parse_config(SFTConfig, argv, description=__doc__))
