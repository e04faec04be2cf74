"""How the format-1 checkpoints beside this file were made (run once, on commit 6dcf5aa, before format 2).

    # then copy what it prints into tests/data/format1
    python tests/data/format1/make_format1.py /tmp/format1

Both runs are tiny (a 32x32, 8-frame world; frames_tiny, and the LLM's vtok_tiny, shrunk to width 8; a
one-layer, width-8 Llama) and straight: the checkpoint of step 2 is kept, with the run's config.yaml (the
resolved config, as it was saved) and metrics.jsonl, whose losses after step 2 a run resumed from that
checkpoint must reproduce
(tests/test_checkpoint.py).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from mmvid.data.shapes.build import WorldSettings, build_world

ROOT = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
WORLD = WorldSettings(train=8, val=4, test=2, fewshot=0, frames=8, size=32)
TOKENIZER = ["model_overrides={dim: 8, decoder_dim: 8, num_heads: 1, decoder_heads: 1, patch_size: 4}",
             "steps=4", "checkpoint_every=2",
             "keep_checkpoints=5", "val_every=100", "val_videos=4", "threads=1", "log_every=1"]
SFT_CONFIG = """
model:
  llm_config: {{model_type: llama, hidden_size: 8, intermediate_size: 16, num_hidden_layers: 1,
               num_attention_heads: 2, num_key_value_heads: 1, max_position_embeddings: 384,
               tie_word_embeddings: false}}
  text_tokenizer: {root}/text-tokenizer
  video_tokenizer: vtok_tiny
  video_tokenizer_overrides: {{dim: 8, decoder_dim: 8, num_heads: 1, decoder_heads: 1}}
  projector_kwargs: {{max_frames: 8}}
  num_frames: 8
  max_length: 384
  generation_head: null
data:
  world: {root}/world
  train: [{root}/world/train/sft.jsonl]
  curriculum: [{root}/world/train/sft_attributes.jsonl]
  curriculum_steps: 3
  val_bench: null
  test_bench: null
  text_corpus_vocab: 320
  vision_tower: null
  pretrained_llm: null
  video_tokenizer_config: null
batch_size: 2
log_every: 1
warmup_steps: 2
eval_every: 0
steps: 5
checkpoint_every: 2
keep_checkpoints: 5
"""


def main(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    build_world(root / "world", WORLD, progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "tokenizers/train.py", "--config", "tokenizers/frames/frames_tiny.yaml",
                    f"data.source={root / 'world'}", f"out={root / 'tokenizer'}", *TOKENIZER], cwd=ROOT,
                   env=env, check=True)
    (root / "sft.yaml").write_text(SFT_CONFIG.format(root=root))
    deepspeed = str(Path(sys.executable).with_name("deepspeed"))
    subprocess.run([deepspeed, "--num_gpus", "1", "--master_port", "29690", "train/sft.py", "--config",
                    str(root / "sft.yaml"), f"out={root / 'sft'}"], cwd=ROOT, env=env, check=True)
    for run in ("tokenizer", "sft"):
        shutil.rmtree(HERE / run, ignore_errors=True)
        shutil.copytree(root / run / "checkpoints" / "step_000002",
                        HERE / run / "checkpoints" / "step_000002")
        for name in ("metrics.jsonl", "config.yaml"):
            shutil.copy(root / run / name, HERE / run / name)
    print(f"wrote {HERE / 'tokenizer'} and {HERE / 'sft'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
