import sys, logging
logging.basicConfig(level=logging.INFO)
from mmvid.sft.text_pretrain import TextPretrainConfig, pretrain_llm
from mmvid.sft.world_data import reading_comprehension
from mmvid.sft.config import TINY_LLAMA
out, minutes, allobj = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1"
lr = float(sys.argv[4]) if len(sys.argv) > 4 else 1e-3
bs = int(sys.argv[5]) if len(sys.argv) > 5 else 32
pretrain_llm(TextPretrainConfig(out=out, tokenizer="runs/sft-default/text-tokenizer", llm_config=dict(TINY_LLAMA), minutes=minutes, lr=lr, batch_size=bs),
             reading_comprehension("data/shapes", "train", all_objects=allobj))
