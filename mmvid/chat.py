"""Talk to a trained VideoLLM about a video.

    python -m mmvid.chat --model runs/sft-default/final --video clip.mp4          # interactive
    python -m mmvid.chat --video clip.mp4 --prompt "What moves?"                   # one answer, exit 0
    printf 'What moves?\\nAnd then?\\n' | mmvid-chat --video clip.mp4              # one turn per line
    python -m mmvid.chat --generate "a small red circle moves left" --output red.gif   # text -> video, exit 0

Commands: /video PATH, /frames N, /reset, /save FILE, /generate PROMPT, /help, /quit. Ctrl-C stops the current
answer, not the conversation; Ctrl-D (end of input) quits.

The video is encoded once; every turn reuses the KV cache of everything said so far (the video
span included) and only runs the new tokens (mmvid.generation's PromptCache), so later turns start
answering much sooner than the first (the `ttft_s` of each turn is in the transcript that /save writes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmvid.generation import PromptCache, SamplingParams, stream
from mmvid.text_tokenizer import VIDEO_TOKEN

DEFAULT_MODEL = "runs/sft-default/final"
HELP = """commands:
  /video PATH   talk about another video (starts a new conversation)
  /frames N     read videos with N frames (re-reads the current video)
  /reset        forget the conversation, keep the video
  /save FILE    write the transcript as JSON
  /generate P   make a video of prompt P (needs a model with a generation head), save it, and talk about it
  /help         this list
  /quit         leave (Ctrl-D also quits; Ctrl-C stops an answer)"""


@dataclass
class Turn:
    role: str
    content: str
    ttft_s: float | None = None  # time to first token (assistant turns)
    seconds: float | None = None
    interrupted: bool = False


@dataclass
class ChatSession:
    """A conversation about one video with a VideoLLM, with the KV cache kept across turns."""

    model: object
    num_frames: int | None = None  # default: the model's
    fps: float | None = None
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    max_new_tokens: int = 128
    seed: int | None = None
    video_path: str | None = None
    turns: list[Turn] = field(default_factory=list)
    encode_calls: int = 0  # how many times a video was encoded (tests check the cache is reused)
    reused_tokens: int = 0  # tokens of the last prompt served from the KV cache instead of recomputed

    def __post_init__(self):
        self.num_frames = self.num_frames or self.model.processor.config.num_frames
        self._features: torch.Tensor | None = None
        self._cache = PromptCache()  # the KV cache of the conversation so far
        self._generator = None if self.seed is None else torch.Generator(self.model.device).manual_seed(
            self.seed)

    # -- state -------------------------------------------------------------------------------------

    def set_video(self, path: str | None) -> None:
        """Read and encode a video (raises FileNotFoundError / VideoDecodeError); a new conversation."""
        if path is None:
            self._features, self.video_path = None, None
        else:
            video = self.model.processor.load_video(path, num_frames=self.num_frames, fps=self.fps or None)
            with torch.no_grad():
                self._features = self.model.encode_video(video[None])
            self.encode_calls += 1
            self.video_path = str(path)
        self.reset()

    def set_frames(self, n: int) -> None:
        self.num_frames = self.model.processor.config.check_frames(n)  # within the video tokenizer's limits
        if self.video_path is not None:
            self.set_video(self.video_path)

    def reset(self) -> None:
        self.turns = []
        self._cache.reset()

    def messages(self) -> list[dict]:
        out = []
        for i, turn in enumerate(self.turns):
            content = turn.content
            if i == 0 and self._features is not None:
                content = f"{VIDEO_TOKEN}\n{content}"
            out.append({"role": turn.role, "content": content})
        return out

    # -- answering ---------------------------------------------------------------------------------

    @torch.no_grad()
    def ask(self, text: str, on_text=None) -> Turn:
        """Answer one user turn; `on_text(piece)` receives the answer as it is generated."""
        if not text.strip():
            raise ValueError("empty prompt")
        start = time.perf_counter()
        self.turns.append(Turn("user", text))
        ids = self.model.prompt_ids(self.messages(), self._features)
        params = SamplingParams(temperature=self.temperature, top_p=self.top_p,
                                max_new_tokens=self.max_new_tokens)
        answer, ttft, interrupted = "", None, False
        try:
            for delta in stream(self.model, ids, params, self._features, self._cache, self._generator):
                ttft = time.perf_counter() - start if ttft is None else ttft
                answer += delta.text
                if on_text and delta.text:
                    on_text(delta.text)
        except KeyboardInterrupt:
            # keep what was said; the next turn rebuilds the cache (the video stays encoded)
            interrupted = True
            self._cache.reset()
        self.reused_tokens = self._cache.reused
        turn = Turn("assistant", answer.strip(), ttft, time.perf_counter() - start, interrupted)
        self.turns.append(turn)
        return turn

    def transcript(self) -> dict:
        return {
            "video": self.video_path,
            "num_frames": self.num_frames,
            "settings": {"temperature": self.temperature, "top_p": self.top_p,
                         "max_new_tokens": self.max_new_tokens, "seed": self.seed, "fps": self.fps},
            "turns": [t.__dict__ for t in self.turns],
        }


# ----------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mmvid-chat", description="Chat with a VideoLLM about a video.")
    parser.add_argument("--model", "--model-path", "--model_path", default=DEFAULT_MODEL,
                        help="a VideoLLM folder (default %(default)s)")
    parser.add_argument("--video", help="the video to talk about")
    parser.add_argument("--prompt", help="answer this one prompt and exit")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", "--top_p", type=float, default=1.0, dest="top_p")
    parser.add_argument("--max-new-tokens", "--max_new_tokens", type=int, default=128, dest="max_new_tokens")
    parser.add_argument("--num-frames", "--num_frames", type=int, dest="num_frames",
                        help="default: the model's")
    parser.add_argument("--fps", type=float, help="sample frames at this rate (capped by --num-frames)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--seed", type=int, default=0)
    gen = parser.add_argument_group("text to video (/generate, --generate)")
    gen.add_argument("--generate", metavar="PROMPT",
                     help="generate one video of PROMPT, write it to --output and exit")
    gen.add_argument("--output", help="where --generate writes (.mp4 or .gif; default generated.mp4)")
    gen.add_argument("--output-dir", "--output_dir", dest="output_dir", default="generated",
                     help="folder for /generate's videos (default %(default)s)")
    gen.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (1 = none)")
    gen.add_argument("--gen-temperature", "--gen_temperature", dest="gen_temperature", type=float,
                     default=1.0,
                     help="sampling temperature of the video tokens (discrete: 0 = greedy; flow: the noise "
                          "scale)")
    gen.add_argument("--gen-top-k", "--gen_top_k", dest="gen_top_k", type=int, default=0)
    gen.add_argument("--gen-steps", "--gen_steps", dest="gen_steps", type=int,
                     help="flow sampler steps (default: the head's)")
    return parser.parse_args(argv)


def generate(session: ChatSession, prompt: str, output: str | Path, args) -> Path:
    """Text -> video with the session's model, written to `output`; prints the time it took."""
    if not prompt.strip():
        raise ValueError("empty prompt: /generate PROMPT")
    start = time.perf_counter()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    frames = session.model.generate_video(prompt, guidance_scale=args.guidance,
                                          temperature=args.gen_temperature,
                                          top_k=args.gen_top_k, top_p=args.top_p, steps=args.gen_steps,
                                          seed=args.seed, output=output)
    print(f"[generated {output}: {frames.shape[0]} frames {frames.shape[1]}x{frames.shape[2]} in "
          f"{time.perf_counter() - start:.1f} s]")
    return output


def load_session(args) -> ChatSession:
    from mmvid.videollm import VideoLLM

    path = Path(args.model)
    if not (path / "config.json").is_file():
        hint = " (train one with `deepspeed train/sft.py`)" if args.model == DEFAULT_MODEL else ""
        raise FileNotFoundError(f"no VideoLLM checkpoint at {path}{hint}")
    model = VideoLLM.from_pretrained(path, device=args.device).eval()
    if args.dtype:
        model.to(getattr(torch, args.dtype))
    torch.manual_seed(args.seed)
    session = ChatSession(model, num_frames=args.num_frames, fps=args.fps, temperature=args.temperature,
                          top_p=args.top_p,
                       max_new_tokens=args.max_new_tokens, seed=args.seed)
    return session


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        session = load_session(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.generate is not None:
        try:
            generate(session, args.generate, args.output or "generated.mp4", args)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    if args.video:
        if not _switch(session, args.video):
            return 1 if args.prompt else _loop(session, args)
    if args.prompt is not None:
        if not args.prompt.strip():
            print("error: empty prompt", file=sys.stderr)
            return 2
        _answer(session, args.prompt, stream=False)
        return 0
    return _loop(session, args)


def _switch(session: ChatSession, path: str) -> bool:
    from mmvid.data import VideoDecodeError

    try:
        session.set_video(path)
    except (FileNotFoundError, VideoDecodeError, ValueError) as e:
        print(f"cannot use video: {e}")
        return False
    print(f"[video {path}: {session.num_frames} frames, {session._features.shape[1]} video tokens]")
    return True


def _answer(session: ChatSession, text: str, stream: bool) -> None:
    if stream:
        print("assistant> ", end="", flush=True)
        turn = session.ask(text, on_text=lambda piece: print(piece, end="", flush=True))
        print(" [stopped]" if turn.interrupted else "")
    else:
        print(session.ask(text).content)


def _loop(session: ChatSession, args=None) -> int:
    args = args or parse_args([])
    interactive = sys.stdin.isatty()
    if interactive:
        print("mmvid chat: type a question, or /help")
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            return 0
        except KeyboardInterrupt:
            print()
            return 0
        text = line.strip()
        if not text:
            print("(empty prompt: type a question, or /help)")
            continue
        if text.startswith("/"):
            command, _, argument = text.partition(" ")
            argument = argument.strip()
            if command == "/quit":
                return 0
            if command == "/help":
                print(HELP)
            elif command == "/reset":
                session.reset()
                print("[conversation reset]")
            elif command == "/video":
                if argument:
                    _switch(session, argument)
                else:
                    print("usage: /video PATH")
            elif command == "/frames":
                try:
                    session.set_frames(int(argument))
                    print(f"[{session.num_frames} frames]")
                except ValueError as e:
                    print(f"usage: /frames N ({e})")
            elif command == "/generate":
                count = (len(list(Path(args.output_dir).glob("generated-*.mp4")))
                         if Path(args.output_dir).is_dir() else 0)
                try:
                    path = generate(session, argument, Path(args.output_dir) / f"generated-{count + 1}.mp4",
                                    args)
                except ValueError as e:
                    print(f"cannot generate: {e}")
                    continue
                _switch(session, str(path))
            elif command == "/save":
                if not argument:
                    print("usage: /save FILE")
                    continue
                try:
                    Path(argument).write_text(json.dumps(session.transcript(), indent=1))
                    print(f"[saved {argument}]")
                except OSError as e:
                    print(f"cannot save: {e}")
            else:
                print(f"unknown command {command}; /help lists them")
            continue
        _answer(session, text, stream=True)


if __name__ == "__main__":
    sys.exit(main())
