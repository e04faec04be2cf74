# How the training text tokenizes: VOCAB MODEL_TYPE (e.g. 600 bpe); prints pieces of world sentences and the
# token count of 3,000 texts.
import sys

import numpy as np

from mmvid.data.conversations import load_conversations
from mmvid.sft.config import SFTConfig
from mmvid.sft.data import t2v_conversation
from mmvid.sft.world_data import world_texts
from mmvid.text_tokenizer import train_text_tokenizer

cfg = SFTConfig()
texts = []
for file in cfg.data.train:
    for s in load_conversations(file): texts += [t["value"] for t in t2v_conversation(s)["conversations"]]
texts += world_texts("data/shapes", "train")
rng = np.random.default_rng(0)
texts = [texts[i] for i in rng.permutation(len(texts))[:50000]]
import collections
import re

words = collections.Counter(w for t in texts for w in re.findall(r"[A-Za-z']+", t)); print(
    "distinct words", len(words))
V, MT = int(sys.argv[1]), sys.argv[2]
try:
    t = train_text_tokenizer(texts, f"/tmp/exp/tok-{MT}-{V}", vocab_size=V, model_type=MT)
except ValueError as e: print("ERR", str(e)[:300]); sys.exit()
for s in ['What colour is the diamond?','What shape is the cyan object?',
          'red orange yellow green cyan blue purple pink white',
          'circle square triangle star diamond cross heart',
          'Where is the red circle relative to the blue star?',
          'The video shows a large cyan star, a large purple star and a small orange square: the cyan star '
          'blinks quickly']:
    print([t.decode([i]) for i in t.encode(s, add_special_tokens=False)])
n = sum(len(t.encode(x, add_special_tokens=False)) for x in texts[:3000])
print("tokens on 3000 texts", n)
