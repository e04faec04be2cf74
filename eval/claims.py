"""The papers' headline claims, measured side by side on the built-in world: one command per claim.

    python eval/claims.py vtok        # VTok vs frame sampling (same frames, same tower) vs frames pooled to
                                      # VTok's budget: the default SFT recipe per arm, 2 seeds, tv_align test
    python eval/claims.py vtok --seeds 0 --arms vtok frames_pooled     # a subset
    python eval/claims.py sweettok    # DQAE vs flattened queries, language vs plain codebook: equal tokens,
                                      # equal minutes; test PSNR / SSIM / Frechet proxy
    python eval/claims.py fewshot     # 5-way 1/5-shot on the held-out actions: SweetTok's words vs continuous
                                      # tokens through the default LLM, text alone, features alone
    python eval/claims.py coordtok    # 128-frame clips: CoordTok vs VTok vs frame sampling at matched token
                                      # numbers and equal minutes, and the memory bench
    python eval/claims.py --help

Each command trains what it needs (or reuses what exists: rerun it after a kill and it resumes), and
writes runs/claims/<claim>/result.json (every setting) and a PNG. The library side is
`mmvid.evaluation.claims`.
"""

import argparse
from pathlib import Path

from mmvid.evaluation import claims


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="claim", required=True)
    vtok = sub.add_parser("vtok", help="VTok vs frame sampling on tv_align (SFT per arm and seed)")
    vtok.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    vtok.add_argument("--arms", nargs="+", default=list(claims.VTOK_ARMS), choices=list(claims.VTOK_ARMS))
    vtok.add_argument("--config", default="train/configs/default.yaml")
    vtok.add_argument("--test-data", default="data/shapes/test/tv_align.jsonl")
    vtok.add_argument("--limit", type=int, default=1000,
                      help="test questions per run (the first N; 0: all 2,572); the frame-sampling arm "
                           "scores about 3.6 questions/s on 2 cores")
    vtok.add_argument("--out", type=Path, default=claims.ROOT / "vtok")
    vtok.add_argument("--no-train", action="store_true",
                      help="train and score nothing: summarise the arm/seed runs that are finished")
    vtok.add_argument("overrides", nargs="*", help="train/sft.py key=value overrides for every arm")
    sweet = sub.add_parser("sweettok", help="SweetTok: DQAE vs flattened queries, MLC vs a plain codebook")
    sweet.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    sweet.add_argument("--arms", nargs="+", default=claims.DEFAULT_SWEETTOK_ARMS,
                       choices=list(claims.SWEETTOK_ARMS))
    sweet.add_argument("--config", default="tokenizers/sweettok/sweettok_base.yaml")
    sweet.add_argument("--minutes", type=float, default=6.0, help="training minutes per arm")
    sweet.add_argument("--data", default="data/shapes")
    sweet.add_argument("--limit", type=int, default=200, help="test videos reconstructed per arm")
    sweet.add_argument("--sequential", action="store_true",
                       help="train the arms one after another with every thread (default: side by side, one "
                            "thread each, so they share the machine alike)")
    sweet.add_argument("--out", type=Path, default=claims.ROOT / "sweettok")
    sweet.add_argument("--name", default="result", help="the summary's name (out/NAME.json), e.g. levers")
    coord = sub.add_parser("coordtok", help="long clips: CoordTok vs VTok vs frame sampling, and memory")
    coord.add_argument("--arms", nargs="+", default=list(claims.COORDTOK_ARMS),
                       choices=list(claims.COORDTOK_ARMS))
    coord.add_argument("--frames", type=int, default=128)
    coord.add_argument("--minutes", type=float, default=4.0, help="training minutes per arm")
    coord.add_argument("--data", default="data/long128", help="built here when missing")
    coord.add_argument("--limit", type=int, default=50, help="test clips reconstructed per arm")
    coord.add_argument("--sequential", action="store_true")
    coord.add_argument("--out", type=Path, default=claims.ROOT / "coordtok")
    few = sub.add_parser("fewshot", help="few-shot recognition through the LLM: words vs continuous tokens")
    few.add_argument("--model", default="runs/sft-default/final")
    few.add_argument("--words-tokenizer", default=str(claims.ROOT / "sweettok" / "dqae_mlc-s0" / "final"))
    few.add_argument("--episodes", type=int, default=100)
    few.add_argument("--words-top", type=int, default=30, help="each clip's K most frequent words")
    few.add_argument("--out", type=Path, default=claims.ROOT / "fewshot")
    args = parser.parse_args()
    if args.claim == "vtok":
        claims.run_vtok(args.seeds, args.arms, args.config, args.test_data, args.out, args.overrides,
                        args.limit or None, train=not args.no_train)
    elif args.claim == "sweettok":
        claims.run_sweettok(args.seeds, args.arms, args.config, args.minutes, args.data, args.limit, args.out,
                            parallel=not args.sequential, name=args.name)
    elif args.claim == "fewshot":
        claims.run_fewshot(args.model, args.words_tokenizer, args.episodes, args.words_top, args.out)
    elif args.claim == "coordtok":
        claims.run_coordtok(args.arms, args.frames, args.minutes, args.data, args.limit, args.out,
                            parallel=not args.sequential)


if __name__ == "__main__":
    main()
