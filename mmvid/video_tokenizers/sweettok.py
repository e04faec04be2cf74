"""SweetTok (arXiv 2412.10443, ICCV 2025): a decoupled query autoencoder (DQAE) whose tokens are
quantized onto words, a motion-enhanced language codebook (MLC).

    video (B, 3, T, H, W), T = 1 + 4k (other T: the last frame is repeated up to 1 + 4 * ceil((T - 1) / 4))
      patchify   first frame -> p x p patches, LN, Linear, LN              v_s (B, G, D)      G = (H / p)^2
                 frames 1.. -> pt x p x p tubes, LN, Linear, LN            v_t (B, L, G, D)   L = (T - 1) / pt
      spatial    v_s + positions -> transformer (spatial_depth)            per-layer features
                 S learned queries: cross-attend to layer l, self-attend    z_s (B, S, D)
      temporal   residuals  v_s - v_t^l  (per location)                    (B G, L, D)
                 -> causal transformer over l (temporal_depth)              per-layer features
                 one learned query per location cross-attends              z_t (B, G, D)
      LN, Linear -> 2C channels, L2-normalized; MLC quantizer               S + G tokens of 2C
    decode: spatial first (grid queries + spatial tokens, joint self-attention -> the first frame's
            features and pixels), then temporal (those features replicated for the L latent frames
            + each location's temporal token + a time embedding; temporal x spatial attention blocks
            -> tube pixels). 17 x 256^2 (compact preset): G = 1024, S = 256 -> 1280 tokens.

Two readings of the encoder (`reading`): "paper" (default) — the spatial queries see the first frame
only and the temporal branch gets first-frame-minus-later residuals v_s - v_t^l; "released" — the
released code: the spatial queries see each layer's features averaged over all latent frames, and the
temporal branch gets consecutive differences v^l - v^(l-1) (v^0 = v_s).

MLC quantizer (one per branch; `vocabulary.py` builds the words): a token of 2C channels is split in
halves; the first half takes the mean of its 2 nearest attribute codewords (adjectives for spatial,
adverbs for temporal), the second its nearest entity codeword (noun / verb). Codewords are a trainable
2-layer GCN (normalized adjacency with self loops over caption co-occurrence edges) of frozen word
vectors; straight-through gradients. Training (MSE + VQ, and the options) is
`objectives.sweettok_training_loss`.

One id layout everywhere: word ids [nouns | adjectives | verbs | adverbs] (`vocabulary.offsets`);
a token is 3 word ids — spatial (adj, adj, noun), temporal (adv, adv, verb), nearest attribute first;
a video is 3 N ids: every spatial token's triple, then every temporal token's (3840 for compact, as the
released generator's sequence). `encode_ids` / `decode_ids` and the words API of `vocabulary.WordIds`
(`ids_to_words` / `words_to_ids` / `video_to_text` / `text_to_video` / `id_ranges` / `check_ids`) all
use it, and `id_layout` describes it (discrete, codebook_size = vocabulary size, words = id -> word,
group = the slot's part of speech). `encode` returns the N quantized token vectors (continuous, for a
projector) by default, or the 3 N ids with `output="ids"` (then the tokenizer is discrete, for an
embedding projector).

Deviations from the paper and the released code (see the brief, part A):
- Training is end to end on pixels (`objectives`). The paper's stage 1 regresses the codes of a frozen
  pretrained OmniTokenizer (5120 tokens) and its stage 2 decodes through OmniTokenizer's decoder; no
  such model exists here. The hook stays: `proxy_codebook_size=K` adds a head giving K-way logits over
  the (1 + L) x G grid of decoder features, which the objective trains on given proxy codes.
- Word vectors: a fixed random vector per word by default (no pretrained text encoder here; the paper
  uses CLIP text or Qwen embeddings); `hf_path` = a local HF model folder uses its input embedding
  table (sub-word pieces averaged). Vectors are L2-normalized rows.
- The vocabulary is the synthetic world's by default (its captions, its own grammar for parts of
  speech), a few dozen words, not the paper's 10,481 + 11,139.
- Blocks are plain pre-norm transformers (`layers`) with learned spatial positions and sinusoidal time
  embeddings (OmniTokenizer's window attention, PEG and RoPE are not reproduced); the patch and tube
  embeddings are both LN -> Linear -> LN, so their difference compares like with like; the pre-VQ map
  is LN -> Linear (the code's 1x1 conv + Linear are one linear map); the GCN has self loops and no
  dropout.
- Any T >= 1 works (padded as above; decode cuts back to `num_frames`); the token count is S + G for
  every T.
- Option, off by default (the paper has no such term): a codebook-usage (entropy) regulariser against
  codebook collapse. Given a temperature, each branch's quantizer also returns, for its attribute words
  and its entity words separately, mean_m H(p_m) - H(mean_m p_m) with p_m = softmax(-d_m / temperature)
  over the squared distances d_m of token m (gradients reach the encoder and the GCN); minimising it
  makes each soft assignment confident and the batch use many words (MAGVIT-v2's entropy penalty). The
  codewords are a GCN of fixed word vectors, so dead words cannot be re-initialised; this acts through
  the loss (`usage_weight` in `objectives.SweetTokObjective`). The hard assignment (the ids) does not
  depend on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, repeat

from mmvid.video_tokenizers.base import TokenLayout, VideoTokenizer
from mmvid.video_tokenizers.layers import MLP, Attention, Block, QueryBlock, grid_positions, init_weights
from mmvid.video_tokenizers.vocabulary import PARTS, WordIds, branch_word_vectors, resolve_vocabulary

READINGS = ("paper", "released")
OUTPUTS = ("vectors", "ids")
QUERIES = ("decoupled", "flattened")
CODEBOOKS = ("language", "plain")
TOKEN_GROUPS = ("spatial", "temporal")
ID_GROUPS = PARTS  # an id's group in id_layout: the part of speech of its slot


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def sinusoidal(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed time embeddings: (L,) positions -> (L, dim) [sin | cos] (Transformer style)."""
    half = dim // 2
    steps = torch.arange(half, device=positions.device, dtype=torch.float32) / max(1, half)
    freqs = torch.exp(-math.log(10000.0) * steps)
    angles = positions.float()[:, None] * freqs[None]  # (L, half)
    out = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return F.pad(out, (0, dim - 2 * half))


def propagate(x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    """Â x with Â = D^-1/2 (A + I) D^-1/2: x (N, F), edge_index long (2, E) src -> dst (both directions
    listed, no self loops) -> (N, F). Scatter-based, so large vocabularies never build an N x N matrix."""
    n = x.shape[0]
    loops = torch.arange(n, device=x.device)
    src = torch.cat([edge_index[0], loops])
    dst = torch.cat([edge_index[1], loops])
    degree = torch.zeros(n, device=x.device, dtype=x.dtype).index_add_(0, dst,
                                                                       torch.ones_like(dst, dtype=x.dtype))
    weight = degree[src].rsqrt() * degree[dst].rsqrt()  # (E + N,)
    return torch.zeros_like(x).index_add_(0, dst, x[src] * weight[:, None])


# ----------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------


class FactorizedBlock(nn.Module):
    """(B, L, G, D) -> same: attention along the L latent frames of each location, then across the G
    locations of each latent frame, then an MLP."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm_time = nn.LayerNorm(dim)
        self.time_attn = Attention(dim, num_heads)
        self.norm_space = nn.LayerNorm(dim)
        self.space_attn = Attention(dim, num_heads)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        h = rearrange(x, "b l g d -> (b g) l d")
        h = h + self.time_attn(self.norm_time(h))
        h = rearrange(h, "(b g) l d -> (b l) g d", b=B)
        h = h + self.space_attn(self.norm_space(h))
        h = h + self.mlp(self.norm_mlp(h))
        return rearrange(h, "(b l) g d -> b l g d", b=B)


class GraphConvolution(nn.Module):
    """Two GCN layers (Kipf & Welling): C = Â ReLU(Â X W1 + b1) W2 + b2 over a word graph."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.weight1 = nn.Linear(in_dim, hidden_dim, bias=False)
        self.bias1 = nn.Parameter(torch.zeros(hidden_dim))
        self.weight2 = nn.Linear(hidden_dim, out_dim, bias=False)
        self.bias2 = nn.Parameter(torch.zeros(out_dim))

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        h = F.relu(propagate(self.weight1(x), edge_index) + self.bias1)
        return propagate(self.weight2(h), edge_index) + self.bias2


class MLCQuantizer(nn.Module):
    """One branch of the motion-enhanced language codebook (spatial: adjectives + nouns; temporal:
    adverbs + verbs). Local word order: [entities..., attributes...] (the global order of the branch).

    forward(z, usage_temperature=None): z (B, N, 2C) L2-normalized -> (quantized (B, N, 2C) with
    straight-through gradients, local ids long (B, N, 3) = [attribute 1, attribute 2, entity] (nearest
    attribute first), codebook loss, commitment loss, usage loss). The usage loss is `usage_loss` of the
    attribute distances plus that of the entity distances when a temperature is given, else a zero.
    """

    def __init__(self, word_vectors: torch.Tensor, num_entities: int, edge_index: torch.Tensor,
                 hidden_dim: int, codeword_dim: int, plain: bool = False):
        super().__init__()
        self.num_entities = num_entities
        self.num_attributes = word_vectors.shape[0] - num_entities
        self.codeword_dim = codeword_dim
        self.plain = plain
        if plain:  # the ablation: as many free codewords, learned directly (no words, no graph)
            self.codes = nn.Parameter(torch.empty(word_vectors.shape[0], codeword_dim))  # initialize_weights
            return
        # Frozen word vectors: a buffer (saved with the weights, never trained).
        self.register_buffer("word_vectors", torch.empty(word_vectors.shape))
        with torch.no_grad():
            self.word_vectors.copy_(word_vectors)
        # rebuilt from the vocabulary
        self.register_buffer("edge_index", edge_index.clone(), persistent=False)
        self.gcn = GraphConvolution(word_vectors.shape[1], hidden_dim, codeword_dim)

    def codebook(self) -> torch.Tensor:
        """(words, C): the GCN's projection of the word vectors, recomputed every call (it trains); the
        free codewords with `plain`."""
        return self.codes if self.plain else self.gcn(self.word_vectors, self.edge_index)

    @staticmethod
    def squared_distances(z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """(M, C), (K, C) -> (M, K) squared Euclidean distances."""
        return (z.pow(2).sum(-1, keepdim=True) - 2 * z @ codes.t() + codes.pow(2).sum(-1)[None]).clamp_min(0)

    def lookup(self, ids: torch.Tensor, codebook: torch.Tensor | None = None) -> torch.Tensor:
        """Local ids (..., 3) -> quantized vectors (..., 2C)."""
        codebook = self.codebook() if codebook is None else codebook
        attributes = codebook[ids[..., :2]].mean(-2)  # (..., C)
        return torch.cat([attributes, codebook[ids[..., 2]]], dim=-1)

    @staticmethod
    def usage_loss(distances: torch.Tensor, temperature: float) -> torch.Tensor:
        """(M, K) squared distances -> mean_m H(p_m) - H(mean_m p_m), p_m = softmax(-d_m / temperature):
        low when each token is confidently near one word and the M tokens spread over many words
        (at least -log K); 0 when they all sit on one word."""
        log_p = F.log_softmax(-distances / temperature, dim=-1)  # (M, K)
        per_token = -(log_p.exp() * log_p).sum(-1).mean()
        # (K,): log of the batch average
        log_mean = torch.logsumexp(log_p, dim=0) - math.log(distances.shape[0])
        return per_token + (log_mean.exp() * log_mean).sum()

    def forward(self, z: torch.Tensor, usage_temperature: float | None = None) -> tuple[torch.Tensor, ...]:
        codebook = self.codebook()
        E, C = self.num_entities, self.codeword_dim
        flat = z.reshape(-1, 2 * C)
        # The distances keep gradients only for the usage loss; the ids read them detached either way,
        # so they are the same with and without it.
        with torch.set_grad_enabled(torch.is_grad_enabled() and usage_temperature is not None):
            attribute_d = self.squared_distances(flat[:, :C].float(), codebook[E:].float())  # (M, attributes)
            entity_d = self.squared_distances(flat[:, C:].float(), codebook[:E].float())  # (M, entities)
        top2 = attribute_d.detach().topk(2, dim=-1, largest=False).indices + E  # (M, 2), nearest first
        entity = entity_d.detach().argmin(-1)  # (M,)
        ids = torch.cat([top2, entity[:, None]], dim=-1).reshape(*z.shape[:-1], 3)
        q = self.lookup(ids, codebook).to(z.dtype)
        codebook_loss = F.mse_loss(q, z.detach())
        commitment_loss = F.mse_loss(z, q.detach())
        if usage_temperature is None:
            usage_loss = z.new_zeros((), dtype=torch.float32)
        else:
            usage_loss = (self.usage_loss(attribute_d, usage_temperature)
                          + self.usage_loss(entity_d, usage_temperature))
        return z + (q - z).detach(), ids, codebook_loss, commitment_loss, usage_loss


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


@dataclass
class SweetTokConfig:
    """Defaults are the paper's compact model: 17 frames at 256x256 -> 256 + 1024 = 1280 tokens."""

    image_size: int = 256  # frames are image_size x image_size pixels
    num_frames: int = 17  # the clip length decode() assumes when not told; any T works (see the docstring)
    patch_size: int = 8  # first-frame patches and tubes, pixels
    temporal_patch_size: int = 4  # tubes, frames
    dim: int = 512  # encoder width
    num_heads: int = 8
    spatial_depth: int = 8  # spatial transformer layers (and spatial query layers: layer l reads layer l)
    temporal_depth: int = 4  # causal temporal layers (and temporal query layers)
    # S; the temporal queries are one per location, G = (image_size / patch_size)^2
    num_spatial_queries: int = 256
    decoder_dim: int = 512
    decoder_heads: int = 8
    decoder_spatial_depth: int = 8  # joint grid + spatial-token self-attention layers
    decoder_temporal_depth: int = 4  # factorized temporal x spatial layers
    reading: str = "paper"  # "paper" or "released" (see the module docstring)
    # "decoupled" (DQAE, the paper) or "flattened" (the ablation: one LARP-like set of S + G queries over
    # every patch and tube; same token count, same quantizers and decoder)
    queries: str = "decoupled"
    output: str = "vectors"  # encode() gives "vectors" (B, N, 2C) or word "ids" (B, 3N)
    # The language codebook
    # "language" (MLC: a GCN of word vectors, the paper) or "plain" (the ablation: the same number of
    # free learned codewords in the same [attribute, attribute, entity] layout; the ids still index words)
    codebook: str = "language"
    codeword_dim: int = 256  # C: each half of a token; tokens have 2C channels
    gcn_hidden_dim: int = 256
    word_dim: int = 256  # width of the random word vectors (set from the table when hf_path is given)
    word_seed: int = 0  # seed of the random word vectors
    hf_path: str | None = None  # a local HF model folder: word vectors from its input embedding table
    # the resolved vocabulary (filled in when built; when set, no path is read)
    vocabulary: dict | None = None
    vocabulary_path: str | None = None  # a vocabulary JSON (Vocabulary.save)
    captions_path: str | None = None  # captions, one a line, to build the vocabulary from ...
    parts_of_speech_path: str | None = None  # ... with this word<TAB>pos list (default: the world's LEXICON)
    min_word_count: int = 1  # building: keep words seen at least this often
    # building: 0 = an edge for any two words in one caption; k = at most k apart
    cooccurrence_window: int = 0
    proxy_codebook_size: int = 0  # K > 0: a K-way head over the latent grid for proxy-code training

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size "
                             f"{self.patch_size}")
        if self.reading not in READINGS:
            raise ValueError(f"unknown reading {self.reading!r}; known: {list(READINGS)}")
        if self.output not in OUTPUTS:
            raise ValueError(f"unknown output {self.output!r}; known: {list(OUTPUTS)}")
        if self.queries not in QUERIES:
            raise ValueError(f"unknown queries {self.queries!r}; known: {list(QUERIES)}")
        if self.codebook not in CODEBOOKS:
            raise ValueError(f"unknown codebook {self.codebook!r}; known: {list(CODEBOOKS)}")
        for name in ("num_frames", "temporal_patch_size", "num_spatial_queries", "spatial_depth",
                     "temporal_depth", "decoder_spatial_depth", "decoder_temporal_depth", "codeword_dim",
                     "gcn_hidden_dim", "word_dim", "min_word_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.num_heads or self.decoder_dim % self.decoder_heads:
            raise ValueError(f"dim {self.dim} / decoder_dim {self.decoder_dim} must be multiples of "
                             f"num_heads {self.num_heads} / decoder_heads {self.decoder_heads}")
        if self.vocabulary_path and self.captions_path:
            raise ValueError("give vocabulary_path (a built vocabulary) or captions_path (to build one), "
                             "not both")
        if self.parts_of_speech_path and not self.captions_path:
            raise ValueError("parts_of_speech_path tags the words of captions_path; give captions_path too")
        if self.cooccurrence_window < 0 or self.proxy_codebook_size < 0:
            raise ValueError("cooccurrence_window and proxy_codebook_size must be >= 0")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_temporal_queries(self) -> int:
        """One per spatial location."""
        return self.grid ** 2

    @property
    def num_query_tokens(self) -> int:
        """N = S + G, the tokens of every video."""
        return self.num_spatial_queries + self.num_temporal_queries


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


class SweetTok(WordIds, VideoTokenizer):
    """The words API (ids <-> words, video <-> text, id ranges) comes from `vocabulary.WordIds`."""

    architecture = "sweettok"
    decoder_prefixes = ("spatial_in", "spatial_token_pos", "grid_queries", "spatial_decoder",
                        "first_frame_head", "temporal_in", "temporal_decoder", "tube_head", "proxy_head")
    config_class = SweetTokConfig
    min_frames = 1

    def __init__(self, config: SweetTokConfig):
        super().__init__(config)
        c = config
        self.vocabulary = resolve_vocabulary(c)
        self.discrete = c.output == "ids"
        D, G, p, pt = c.dim, c.num_temporal_queries, c.patch_size, c.temporal_patch_size
        # Patchify.
        self.first_frame_embed = nn.Sequential(nn.LayerNorm(3 * p * p), nn.Linear(3 * p * p, D),
                                               nn.LayerNorm(D))
        self.tube_embed = nn.Sequential(nn.LayerNorm(3 * pt * p * p), nn.Linear(3 * pt * p * p, D),
                                        nn.LayerNorm(D))
        self.spatial_pos = nn.Parameter(torch.empty(1, G, D))
        if c.queries == "decoupled":
            # Spatial branch.
            self.spatial_blocks = nn.ModuleList([Block(D, c.num_heads) for _ in range(c.spatial_depth)])
            self.spatial_queries = nn.Parameter(torch.empty(1, c.num_spatial_queries, D))
            self.spatial_query_blocks = nn.ModuleList([QueryBlock(D, c.num_heads, self_attention=True)
                                                       for _ in range(c.spatial_depth)])
        self.spatial_out = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, 2 * c.codeword_dim))
        if c.queries == "decoupled":
            # Temporal branch.
            self.temporal_blocks = nn.ModuleList(
                [Block(D, c.num_heads, causal=True) for _ in range(c.temporal_depth)])
            self.temporal_queries = nn.Parameter(torch.empty(1, G, D))  # one per location
            self.temporal_query_blocks = nn.ModuleList([QueryBlock(D, c.num_heads, self_attention=False)
                                                        for _ in range(c.temporal_depth)])
        else:
            # Flattened (LARP-like): one transformer over every patch and tube, S + G queries reading it;
            # as many layers as the two branches together.
            depth = c.spatial_depth + c.temporal_depth
            self.joint_blocks = nn.ModuleList([Block(D, c.num_heads) for _ in range(depth)])
            self.joint_queries = nn.Parameter(torch.empty(1, c.num_query_tokens, D))
            self.joint_query_blocks = nn.ModuleList([QueryBlock(D, c.num_heads, self_attention=True)
                                                     for _ in range(depth)])
        self.temporal_out = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, 2 * c.codeword_dim))
        # The language codebook.
        vocab = self.vocabulary
        spatial_vectors, temporal_vectors, c.word_dim = branch_word_vectors(vocab, c.word_dim, c.word_seed,
                                                                            c.hf_path)
        plain = c.codebook == "plain"
        self.spatial_quantizer = MLCQuantizer(spatial_vectors, len(vocab.noun), vocab.local_edges("spatial"),
                                              c.gcn_hidden_dim, c.codeword_dim, plain=plain)
        self.temporal_quantizer = MLCQuantizer(temporal_vectors, len(vocab.verb),
                                               vocab.local_edges("temporal"),
                                               c.gcn_hidden_dim, c.codeword_dim, plain=plain)
        # Decoder: spatial, then temporal.
        Dd = c.decoder_dim
        self.spatial_in = nn.Linear(2 * c.codeword_dim, Dd)
        self.spatial_token_pos = nn.Parameter(torch.empty(1, c.num_spatial_queries, Dd))
        self.grid_queries = nn.Parameter(torch.empty(1, G, Dd))  # mask token + position of each location
        self.spatial_decoder = nn.ModuleList(
            [Block(Dd, c.decoder_heads) for _ in range(c.decoder_spatial_depth)])
        self.first_frame_head = nn.Sequential(nn.LayerNorm(Dd), nn.Linear(Dd, 3 * p * p))
        self.temporal_in = nn.Linear(2 * c.codeword_dim, Dd)
        self.temporal_decoder = nn.ModuleList([FactorizedBlock(Dd, c.decoder_heads)
                                               for _ in range(c.decoder_temporal_depth)])
        self.tube_head = nn.Sequential(nn.LayerNorm(Dd), nn.Linear(Dd, 3 * pt * p * p))
        self.proxy_head = nn.Linear(Dd, c.proxy_codebook_size) if c.proxy_codebook_size else None
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """ViT-style init (truncated normal 0.02, zero biases, unit LayerNorms; learned queries and
        positions at std 0.02), except the GCNs: Glorot, as GCNConv."""
        init_weights(self)
        for quantizer in (self.spatial_quantizer, self.temporal_quantizer):
            if quantizer.plain:
                nn.init.normal_(quantizer.codes, std=1 / math.sqrt(2 * self.config.codeword_dim))
                continue
            for linear in (quantizer.gcn.weight1, quantizer.gcn.weight2):
                nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(quantizer.gcn.bias1)
            nn.init.zeros_(quantizer.gcn.bias2)

    @property
    def token_dim(self) -> int:
        return 2 * self.config.codeword_dim

    @property
    def clip_frames(self) -> int:
        return self.config.num_frames

    # -- counts and layout -------------------------------------------------------------------------

    def latent_frames(self, num_frames: int) -> int:
        """L: tubes after the first frame (the clip is padded to 1 + L * temporal_patch_size frames)."""
        if num_frames < 1:
            raise ValueError(f"SweetTok needs at least 1 frame, got {num_frames}")
        return max(1, math.ceil((num_frames - 1) / self.config.temporal_patch_size))

    def num_tokens(self, num_frames: int, height: int, width: int) -> int:
        """S + G for any T (3 (S + G) word ids with output="ids")."""
        self.check_size(height, width)
        self.latent_frames(num_frames)
        n = self.config.num_query_tokens
        return 3 * n if self.discrete else n

    def token_layout(self, num_frames: int, height: int, width: int) -> TokenLayout:
        """The tokens of `encode`: groups ("spatial", "temporal"). Spatial tokens describe the first
        frame with the "paper" reading (time 0, t 0) and the whole clip with "released" (time -1);
        they have no grid position (y, x = -1). Temporal tokens span the later frames (time -1) at
        their location's cell centre (y, x), row-major. With output="ids" this is `id_layout`."""
        if self.discrete:
            return self.id_layout(num_frames, height, width)
        time, position = self._token_places(num_frames, height, width)
        S = self.config.num_spatial_queries
        group = torch.tensor([0] * S + [1] * (len(time) - S))
        return TokenLayout(groups=TOKEN_GROUPS, group=group, time=time, position=position)

    def id_layout(self, num_frames: int, height: int, width: int) -> TokenLayout:
        """The 3 N word ids of `encode_ids`: each id has its token's time and position and, as group,
        its slot's part of speech (groups = PARTS: noun, adjective, verb, adverb), so a discrete head
        can restrict each position to its class's id range (`vocabulary.ranges()`)."""
        time, position = self._token_places(num_frames, height, width)
        return TokenLayout(
            groups=ID_GROUPS,
            group=torch.tensor([PARTS.index(p) for p in self.slot_parts()]),
            time=time.repeat_interleave(3),
            position=position.repeat_interleave(3, dim=0),
            discrete=True,
            codebook_size=len(self.vocabulary),
            words=self.vocabulary.words,
        )

    def _token_places(self, num_frames: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each of the S + G tokens' time, long (N,), and position (t, y, x), float (N, 3)."""
        self.check_size(height, width)
        self.latent_frames(num_frames)
        c = self.config
        S, G = c.num_spatial_queries, c.num_temporal_queries
        spatial_time = 0 if c.reading == "paper" else -1
        spatial = torch.tensor([[float(spatial_time), -1.0, -1.0]]).expand(S, 3)
        temporal = torch.cat([torch.full((G, 1), -1.0), grid_positions(c.grid)], dim=1)
        return torch.tensor([spatial_time] * S + [-1] * G), torch.cat([spatial, temporal])

    # -- encode ------------------------------------------------------------------------------------

    def pad_frames(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, 3, 1 + L pt, H, W), the last frame repeated."""
        T = video.shape[2]
        missing = 1 + self.latent_frames(T) * self.config.temporal_patch_size - T
        if missing:
            video = torch.cat([video, video[:, :, -1:].expand(-1, -1, missing, -1, -1)], dim=2)
        return video

    def patchify(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A padded video -> first-frame patch embeddings (B, G, D), tube embeddings (B, L, G, D)."""
        p, pt = self.config.patch_size, self.config.temporal_patch_size
        first = rearrange(video[:, :, 0], "b c (h p) (w q) -> b (h w) (c p q)", p=p, q=p)
        tubes = rearrange(video[:, :, 1:], "b c (l t) (h p) (w q) -> b l (h w) (c t p q)", t=pt, p=p, q=p)
        return self.first_frame_embed(first), self.tube_embed(tubes)

    def encode_latents(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Before quantization: (B, 3, T, H, W) -> z_s (B, S, 2C), z_t (B, G, 2C), L2-normalized."""
        c = self.config
        self.check_video(video)
        first, tubes = self.patchify(self.pad_frames(video))  # (B, G, D), (B, L, G, D)
        B, L = tubes.shape[:2]
        if c.queries == "flattened":
            return self._encode_flattened(first, tubes)
        # Spatial: the queries' layer l reads the spatial transformer's layer l.
        if c.reading == "paper":  # the first frame alone
            x, contexts = first + self.spatial_pos, []
            for block in self.spatial_blocks:
                x = block(x)
                contexts.append(x)  # (B, G, D)
        else:  # every latent frame, each layer's features averaged over them
            frames = rearrange(torch.cat([first[:, None], tubes], dim=1), "b l g d -> (b l) g d")
            x, contexts = frames + self.spatial_pos, []
            for block in self.spatial_blocks:
                x = block(x)
                contexts.append(rearrange(x, "(b l) g d -> b l g d", b=B).mean(1))  # (B, G, D)
        q = self.spatial_queries.expand(B, -1, -1)
        for block, context in zip(self.spatial_query_blocks, contexts):
            q = block(q, context)
        z_s = F.normalize(self.spatial_out(q), dim=-1)  # (B, S, 2C)
        # Temporal: residuals per location, a causal transformer along them, one query per location.
        if c.reading == "paper":
            residual = first[:, None] - tubes  # (B, L, G, D): v_s - v_t^l
        else:
            frames = torch.cat([first[:, None], tubes], dim=1)
            residual = frames[:, 1:] - frames[:, :-1]  # (B, L, G, D): consecutive differences
        time = sinusoidal(torch.arange(1, L + 1, device=video.device), c.dim).to(residual.dtype)
        x, contexts = rearrange(residual, "b l g d -> (b g) l d") + time, []
        for block in self.temporal_blocks:
            x = block(x)
            contexts.append(x)  # (B G, L, D)
        q = repeat(self.temporal_queries, "1 g d -> (b g) 1 d", b=B)
        for block, context in zip(self.temporal_query_blocks, contexts):
            q = block(q, context)
        z_t = F.normalize(self.temporal_out(rearrange(q, "(b g) 1 d -> b g d", b=B)), dim=-1)  # (B, G, 2C)
        return z_s, z_t

    def _encode_flattened(self, first: torch.Tensor,
                          tubes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The flattened-query ablation: (B, G, D), (B, L, G, D) -> z_s (B, S, 2C), z_t (B, G, 2C). Every
        patch and tube (positions + time) in one transformer; S + G queries read its layers in turn; the
        first S go through the spatial map and quantizer, the other G through the temporal ones."""
        c, B, L = self.config, tubes.shape[0], tubes.shape[1]
        time = sinusoidal(torch.arange(L + 1, device=first.device), c.dim).to(first.dtype)  # (1 + L, D)
        x = torch.cat([first[:, None], tubes], dim=1) + self.spatial_pos[:, None] + time[None, :, None]
        x, contexts = rearrange(x, "b l g d -> b (l g) d"), []
        for block in self.joint_blocks:
            x = block(x)
            contexts.append(x)  # (B, (1 + L) G, D)
        q = self.joint_queries.expand(B, -1, -1)
        for block, context in zip(self.joint_query_blocks, contexts):
            q = block(q, context)
        S = c.num_spatial_queries
        z_s, z_t = self.spatial_out(q[:, :S]), self.temporal_out(q[:, S:])  # (B, S, 2C), (B, G, 2C)
        return F.normalize(z_s, dim=-1), F.normalize(z_t, dim=-1)

    def quantize(self, video: torch.Tensor,
                 usage_temperature: float | None = None) -> dict[str, torch.Tensor]:
        """Encode and quantize: {"vectors" (B, N, 2C) straight-through, "ids" long (B, 3N) word ids,
        "codebook_loss", "commitment_loss", "usage_loss" (summed over both branches; the usage loss is
        0 unless a `usage_temperature` is given), "spatial_ids", "temporal_ids" (local, (B, S, 3) /
        (B, G, 3))}."""
        z_s, z_t = self.encode_latents(video)
        q_s, ids_s, cb_s, cm_s, us_s = self.spatial_quantizer(z_s, usage_temperature)
        q_t, ids_t, cb_t, cm_t, us_t = self.temporal_quantizer(z_t, usage_temperature)
        offset = self.vocabulary.offsets["verb"]  # the temporal branch's first global id
        ids = torch.cat([ids_s.flatten(1), (ids_t + offset).flatten(1)], dim=1)
        return {"vectors": torch.cat([q_s, q_t], dim=1), "ids": ids, "codebook_loss": cb_s + cb_t,
                "commitment_loss": cm_s + cm_t, "usage_loss": us_s + us_t, "spatial_ids": ids_s,
                "temporal_ids": ids_t}

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> quantized tokens (B, S + G, 2C), or word ids (B, 3 (S + G)) with
        output="ids"."""
        out = self.quantize(video)
        return out["ids"] if self.discrete else out["vectors"]

    def encode_ids(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> long (B, 3 (S + G)) word ids (layout in the module docstring)."""
        return self.quantize(video)["ids"]

    # -- decode ------------------------------------------------------------------------------------

    def decode(self, tokens: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Quantized tokens (B, S + G, 2C) or word ids (B, 3 (S + G)) -> video (B, 3, T, H, W),
        T = num_frames (default config.num_frames)."""
        if isinstance(tokens, torch.Tensor) and not tokens.is_floating_point():
            return self.decode_ids(tokens, num_frames)
        return self.decode_with_features(tokens, num_frames)[0]

    def decode_ids(self, ids: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Word ids (B, 3 (S + G)) -> video (B, 3, T, H, W)."""
        return self.decode_with_features(self.ids_to_vectors(ids), num_frames)[0]

    def decode_with_features(self, tokens: torch.Tensor,
                             num_frames: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantized tokens (B, S + G, 2C) -> (video (B, 3, T, H, W), decoder grid features
        (B, 1 + L, G, decoder_dim), what a proxy-code head reads)."""
        c = self.config
        S, G, N = c.num_spatial_queries, c.num_temporal_queries, c.num_query_tokens
        if not isinstance(tokens, torch.Tensor) or not tokens.is_floating_point() or tokens.ndim != 3 \
                or tokens.shape[1:] != (N, self.token_dim):
            shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"expected quantized tokens (B, {N}, {self.token_dim}) = (B, S + G, 2C) or "
                             f"word ids (B, {3 * N}), got {shape}")
        T = c.num_frames if num_frames is None else num_frames
        L = self.latent_frames(T)
        B, p, pt, side = tokens.shape[0], c.patch_size, c.temporal_patch_size, c.grid
        # Spatial: grid queries and the spatial tokens in joint self-attention -> the first frame.
        spatial = self.spatial_in(tokens[:, :S]) + self.spatial_token_pos  # (B, S, Dd)
        x = torch.cat([self.grid_queries.expand(B, -1, -1), spatial], dim=1)
        for block in self.spatial_decoder:
            x = block(x)
        first = x[:, :G]  # (B, G, Dd)
        frame0 = rearrange(self.first_frame_head(first), "b (h w) (c p q) -> b c 1 (h p) (w q)", h=side, p=p,
                           q=p)
        # Temporal: the first frame's features for every latent frame + its location's token + time.
        time = sinusoidal(torch.arange(1, L + 1, device=tokens.device), c.decoder_dim).to(tokens.dtype)
        h = first[:, None] + self.temporal_in(tokens[:, S:])[:, None] + time[None, :, None]  # (B, L, G, Dd)
        for block in self.temporal_decoder:
            h = block(h)
        later = rearrange(self.tube_head(h), "b l (h w) (c t p q) -> b c (l t) (h p) (w q)", h=side, t=pt,
                          p=p, q=p)
        video = torch.cat([frame0, later], dim=2)[:, :, :T]
        return video, torch.cat([first[:, None], h], dim=1)

    def ids_to_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """Word ids (B, 3N) -> quantized tokens (B, N, 2C)."""
        self.check_ids(ids)
        S = self.config.num_spatial_queries
        triples = ids.long().reshape(ids.shape[0], -1, 3)  # (B, N, 3)
        spatial = self.spatial_quantizer.lookup(triples[:, :S])
        temporal = self.temporal_quantizer.lookup(triples[:, S:] - self.vocabulary.offsets["verb"])
        return torch.cat([spatial, temporal], dim=1)


# ----------------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------------


def sweettok_tiny(**overrides) -> SweetTok:
    """For tests: 5 frames at 32x32 (any T works), 4 spatial + 16 temporal = 20 tokens of 16."""
    defaults = dict(image_size=32, num_frames=5, dim=32, num_heads=2, spatial_depth=1, temporal_depth=1,
                    num_spatial_queries=4, decoder_dim=32, decoder_heads=2, decoder_spatial_depth=1,
                    decoder_temporal_depth=1, codeword_dim=8, gcn_hidden_dim=16, word_dim=16)
    return SweetTok(SweetTokConfig(**{**defaults, **overrides}))


def sweettok_base(**overrides) -> SweetTok:
    """The built-in CPU size: 17 frames at 64x64 (the world's 16 are padded by one), 16 spatial + 64
    temporal = 80 tokens of 64 (VTok's 79, frames_base's 80)."""
    defaults = dict(image_size=64, dim=128, num_heads=4, spatial_depth=2, temporal_depth=2,
                    num_spatial_queries=16, decoder_dim=128, decoder_heads=4, decoder_spatial_depth=2,
                    decoder_temporal_depth=2, codeword_dim=32, gcn_hidden_dim=64, word_dim=64)
    return SweetTok(SweetTokConfig(**{**defaults, **overrides}))


def sweettok_compact(**overrides) -> SweetTok:
    """The paper's compact model: 17 frames at 256x256 -> 256 spatial + 1024 temporal = 1280 tokens of
    512 (2 x 256-d halves), width 512, 8 + 8 spatial / 4 + 4 temporal encoder layers, 8 + 4 decoder layers."""
    return SweetTok(SweetTokConfig(**overrides))
