r"""Train a video tokenizer.

    python tokenizers/train.py --config tokenizers/vtok/vtok_base.yaml
    python tokenizers/train.py --config tokenizers/vtok/vtok_tiny.yaml steps=50 out=runs/vtok-tiny
    python tokenizers/train.py --config tokenizers/frames/frames_base.yaml \
        data.source=/my/videos data.train_split=null
    # DDP (gloo on CPU)
    torchrun --nproc_per_node 2 tokenizers/train.py --config tokenizers/vtok/vtok_tiny.yaml
    python tokenizers/train.py --help                                       # every key

Re-running the same command after a kill resumes from the newest checkpoint in `out`.
"""

from mmvid.config import parse_config
from mmvid.video_tokenizers.trainer import TokenizerTrainConfig, run

if __name__ == "__main__":
    run(parse_config(TokenizerTrainConfig, description=__doc__))
