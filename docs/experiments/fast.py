# Fast loop: cached frozen VTok tokens for N train videos; the default VideoLLM (projector + pretrained LLM);
# packed cloze rows via the project's SFTDataset machinery but with cached tokens; val cloze eval on 300 questions.
import os, sys, json, time, random, torch, numpy as np
from pathlib import Path
from mmvid.sft.config import SFTConfig
from mmvid.sft.trainer import use_pretrained_llm
from mmvid.sft.data import SFTDataset
from mmvid.videollm import VideoLLM
from mmvid.data import read_video, frames_to_tensor
from dataclasses import replace
E = dict(a.split("=") for a in sys.argv[1:])
torch.set_num_threads(int(E.get("THREADS", 2))); torch.manual_seed(int(E.get("SEED", 0))); random.seed(int(E.get("SEED", 0)))
N = int(E.get("N", 2000)); SECS = float(E.get("SECS", 240)); BS = int(E.get("BS", 8)); LR = float(E.get("LR", 1e-3))
VT = E.get("VT", "runs/sft-default/video-tokenizer"); LLM = E.get("LLM", "runs/sft-default/llm")
MAXR = int(E.get("MAXR", 8)); KP = int(E.get("KP", 0)); TRAINFILE = E.get("TRAIN", "data/shapes/train/sft_cloze.jsonl")
cfg = SFTConfig()
mcfg = replace(cfg.model, llm=LLM if LLM != "none" else None, video_tokenizer=VT if not KP else "vtok_base", generation_head=None,
               video_tokenizer_overrides={"key_pool": KP} if KP else {})
if LLM == "none":
    lc = dict(cfg.model.llm_config); H = int(E.get("H", 256)); lc.update(hidden_size=H, intermediate_size=int(H * 2.6875), num_hidden_layers=int(E.get("LAYERS", 4)), num_attention_heads=max(2, H // 64), num_key_value_heads=max(2, H // 64))
    mcfg = replace(mcfg, llm=None, llm_config=lc)
model = VideoLLM.build(mcfg)
ORACLE = E.get("ORACLE", "0") == "1"
QFIRST = E.get("QFIRST", "0") == "1"
from mmvid.vision_tower import cell_labels
def oracle(split, video):
    rec = json.loads(Path(f"data/shapes/{split}/{video}").with_suffix(".json").read_text())
    lab = torch.from_numpy(cell_labels(rec, [0], 64, 8)[0]).reshape(4, 64)  # (4, 64)
    oh = torch.cat([torch.nn.functional.one_hot(lab[0], 9), torch.nn.functional.one_hot(lab[1], 7), torch.nn.functional.one_hot(lab[2], 2), torch.nn.functional.one_hot(lab[3], 3)], -1).float()
    out = torch.zeros(71, 32); out[:64, :21] = oh; return out
cache = Path(f"/tmp/exp/tokcache-{VT.strip('/').replace('/', '_')}-kp0-{N}{'-oracle' if ORACLE else ''}.pt")
if ORACLE: toks = {f"videos/{i:06d}.mp4": oracle("train", f"videos/{i:06d}.mp4") for i in range(N)}
elif cache.exists(): toks = torch.load(cache, weights_only=True)
else:
    t = time.time(); toks = {}
    with torch.no_grad():
        for i0 in range(0, N, 50):
            vs = torch.stack([frames_to_tensor(read_video(f"data/shapes/train/videos/{i:06d}.mp4", num_frames=8, size=64).frames) for i in range(i0, min(N, i0 + 50))])
            for k, tk in enumerate(model.video_tokens(vs)): toks[f"videos/{i0 + k:06d}.mp4"] = tk
    torch.save(toks, cache); print("cached", len(toks), time.time() - t, flush=True)
def pool(t):  # (71, D) -> (KP*KP + 7, D): the key grid average-pooled (to_tokens is linear, so this is VTok's key_pool)
    k = t[:64].T.reshape(-1, 8, 8)[None]; k = torch.nn.functional.adaptive_avg_pool2d(k, KP)[0].reshape(t.shape[1], -1).T
    return torch.cat([k, t[64:]])
if KP: toks = {k: pool(v) for k, v in toks.items()}
samples = [json.loads(l) for l in open(TRAINFILE)]
samples = [s for s in samples if s["video"] in toks]
tmp = Path(f"/tmp/exp/train-{N}.jsonl"); tmp.write_text("".join(json.dumps(s) + "\n" for s in samples))
ds = SFTDataset([str(tmp)], model, split_turns=True, pack_questions=True, max_rounds=MAXR, merge_t2v=False)
CUR = E.get("CUR")  # FILE:SECONDS: a first phase on another conversation file (a curriculum), then TRAIN
if CUR:
    cur_file, cur_secs = CUR.rsplit(":", 1); cur_secs = float(cur_secs)
    cs = [json.loads(l) for l in open(cur_file)]; cs = [s for s in cs if s["video"] in toks]
    ctmp = Path(f"/tmp/exp/cur-{N}.jsonl"); ctmp.write_text("".join(json.dumps(s) + "\n" for s in cs))
    ds_main, ds = ds, SFTDataset([str(ctmp)], model, split_turns=True, pack_questions=True, max_rounds=MAXR, merge_t2v=False)
ds_load = ds.load
ENC = {}
def load(i):  # the project's packing, with cached tokens instead of decoded frames
    sample, root = ds.items[i]
    from mmvid.sft.data import split_rounds
    from mmvid.prompting import pack_rounds
    rounds = split_rounds(sample["conversations"])
    if QFIRST:  # the question before the video (no shared prefix then, so PACK=0)
        rounds = [[{**t, "value": t["value"].replace("<video>\n", "") + "\n<video>"} if "<video>" in t["value"] else t for t in r] for r in rounds]
    if len(rounds) > MAXR:
        rest = (torch.randperm(len(rounds) - 1)[: MAXR - 1] + 1).sort().values.tolist(); rounds = [rounds[0]] + [rounds[j] for j in rest]
    enc = [ENC.setdefault((i, json.dumps(r)), model.processor.encode_sample(r, num_videos=1)) if (i, json.dumps(r)) not in ENC else ENC[(i, json.dumps(r))] for r in rounds]
    if E.get("PACK", "1") == "0":
        return enc, toks[sample["video"]]
    return [pack_rounds(enc, model.video_ids)], toks[sample["video"]]
val = [json.loads(l) for l in open("data/shapes/val/tv_align.jsonl")][:300]
from mmvid.video_tokenizers import video_tokenizer_from
VTOK = video_tokenizer_from(VT).eval()
vcache = {}
from mmvid.evaluation.scoring import continuation_logprobs
@torch.no_grad()
def evaluate():
    model.eval(); acc = {}
    for q in val:
        if q["video"] not in vcache and ORACLE: vcache[q["video"]] = oracle("val", q["video"])[None]
        if q["video"] not in vcache:
            vcache[q["video"]] = (VTOK.encode if KP else model.video_tokens)(frames_to_tensor(read_video("data/shapes/val/" + q["video"], num_frames=8, size=64).frames)[None])
            if KP: vcache[q["video"]] = pool(vcache[q["video"]][0])[None]
        f = model.project(vcache[q["video"]])
        msg = [{"role": "user", "content": f"{q['question']}\n<video>" if QFIRST else f"<video>\n{q['question']}"}]
        for end in (True, False):  # the option as the whole answer (end-of-turn token), and lm-eval's plain continuation
            s = continuation_logprobs(model, msg, q["options"], f, end_of_answer=end)
            acc.setdefault((end, q["category"]), []).append(int(q["options"][max(range(4), key=s.__getitem__)] == q["answer_text"]))
    model.train(); r = {k: round(sum(v) / len(v), 2) for (end, k), v in sorted(acc.items()) if end}
    r["ALL"] = round(sum(sum(v) for (end, _), v in acc.items() if end) / len(val), 3)
    r["ALL_plain"] = round(sum(sum(v) for (end, _), v in acc.items() if not end) / len(val), 3)
    r["action_plain"] = round(sum(acc[(False, "action")]) / len(acc[(False, "action")]), 2); return r
LOSS = E.get("LOSS", "token")  # token: the mean over supervised tokens; span: each answer span (a run of labels) counts once
def span_loss(logits, labels):
    lab = labels[:, 1:]; sup = lab != -100
    tok = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), lab.flatten().clamp(min=0), reduction="none").view_as(lab)
    start = sup & ~torch.nn.functional.pad(sup, (1, 0))[:, :-1]  # first token of each run
    run = torch.cumsum(start.flatten().long(), 0).view_as(lab) * sup  # run id per supervised token, 0 elsewhere
    n = torch.bincount(run.flatten(), minlength=int(run.max()) + 1).float()
    w = sup.float() / n[run].clamp(min=1)
    return (tok * w).sum() / start.sum().clamp(min=1)
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW([{"params": [p for p in model.llm.parameters() if p.requires_grad], "lr": LR},
                         {"params": [p for p in model.projector.parameters() if p.requires_grad], "lr": float(E.get("PLR", LR))}])
total_est = int(E.get("STEPS", 400))
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / 30) * (0.5 * (1 + np.cos(np.pi * min(1, s / total_est)))))
t0 = time.time(); step = 0; order = list(range(len(ds.items))); random.shuffle(order); pos = 0; nexte = SECS / 3
while time.time() - t0 < SECS and not (E.get("STOP") == "1" and step >= total_est):
    if CUR and ds is not ds_main and (step >= int(E["CURSTEPS"]) if "CURSTEPS" in E else time.time() - t0 > cur_secs):
        print(f"curriculum phase done at step {step}", flush=True); ds = ds_main; ENC.clear(); order = list(range(len(ds.items))); random.shuffle(order); pos = 0
    items = []
    for _ in range(BS):
        items.append(load(order[pos % len(order)])); pos += 1
    batch = model.processor.collate([x for e, _ in items for x in e])
    feats = model.project(torch.stack([t for e, t in items for _ in e]))
    out = model(**batch, video_features=feats)
    loss = out.loss if LOSS == "token" else span_loss(out.logits, batch["labels"])
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step(); sched.step(); step += 1
    if (step % int(E["EVERY"]) == 0) if "EVERY" in E else time.time() - t0 > nexte:
        nexte += SECS / 3; print(f"step {step} {time.time()-t0:.0f}s loss {out.loss.item():.3f} epoch {pos/len(order):.2f} val {evaluate()}", flush=True)
print(f"FINAL {E} steps {step} epochs {pos/len(order):.2f} val {evaluate()}", flush=True)
