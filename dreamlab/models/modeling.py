"""A Dream-compatible model: Qwen2.5 blocks with bidirectional attention, Dream's parameter names.

The module tree (`model.embed_tokens`, `model.layers.N.self_attn.q_proj`, ..., `lm_head`) is the
one Dream-v0's safetensors use, so a downloaded checkpoint folder loads with `from_pretrained`
and no remote code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from dreamlab.models.configuration import DreamConfig


class DreamRMSNorm(nn.Module):
    """RMSNorm computed in float32, scaled in the input dtype (as Qwen2 does)."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class DreamRotaryEmbedding(nn.Module):
    """Rotary position embedding (theta from the config); cos/sin for given position ids."""

    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("inv_freq", self.inverse_frequencies(config), persistent=False)

    @staticmethod
    def inverse_frequencies(config: DreamConfig) -> torch.Tensor:
        """theta ** (-2i / head_dim) for i < head_dim / 2, in float32."""
        dim = config.head_dim
        return 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))

    def _apply(self, fn, recurse=True):
        # `model.to(torch.bfloat16)` would cast inv_freq too and put RoPE angles off by radians at
        # long positions; Dream keeps it in float32, so recompute it after every move or cast.
        super()._apply(fn, recurse)
        self.inv_freq = self.inverse_frequencies(self.config).to(self.inv_freq.device)
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(x.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate [B, H, N, D] queries and keys by [B, N, D] cos/sin."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


class DreamKVCache:
    """Every layer's keys and values over a whole sequence ([B, KV heads, N, D], keys after RoPE).

    A forward given this cache and `cache_start` runs only a window of positions [start, start + n):
    its queries attend to the cached keys everywhere outside the window and to fresh keys inside it,
    so with a cache taken from the same tokens the window's logits equal the full forward's.
    """

    def __init__(self) -> None:
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def length(self) -> int:
        """Positions covered (0 when empty)."""
        return self.layers[0][0].shape[2] if self.layers else 0

    def splice(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's whole-sequence keys and values with the window [start, start + n) taken from k, v."""
        cached_k, cached_v = self.layers[layer]
        end = start + k.shape[2]
        return (torch.cat([cached_k[:, :, :start], k, cached_k[:, :, end:]], dim=2),
                torch.cat([cached_v[:, :, :start], v, cached_v[:, :, end:]], dim=2))


@dataclass
class DreamModelOutput(ModelOutput):
    """Logits for every input position and, when asked (`use_cache`), the keys and values of this forward."""

    logits: torch.Tensor | None = None
    cache: DreamKVCache | None = None


class DreamAttention(nn.Module):
    """Bidirectional grouped-query attention through torch's SDPA (no causal mask)."""

    def __init__(self, config: DreamConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.dropout = config.attention_dropout
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        cache: DreamKVCache | None = None,
        cache_start: int | None = None,
    ) -> torch.Tensor:
        batch, length, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, k, *position_embeddings)
        if cache is not None:
            if cache_start is not None:  # a window: the rest of the sequence comes from the cache
                k, v = cache.splice(self.layer_idx, cache_start, k, v)
            else:  # a full forward that fills the cache
                cache.layers.append((k, v))
        # enable_gqa shares each KV head with its query heads inside the kernel: no repeated copy of the
        # keys and values (with a cache, the whole sequence's) on every call.
        out = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=attention_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=False,
            enable_gqa=self.num_heads != self.num_kv_heads,
        )
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


class DreamMLP(nn.Module):
    """SwiGLU feed-forward: down(act(gate(x)) * up(x))."""

    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class DreamDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm transformer block; checkpointable through transformers' layer wrapper."""

    def __init__(self, config: DreamConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.self_attn = DreamAttention(config, layer_idx)
        self.mlp = DreamMLP(config)
        self.input_layernorm = DreamRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = DreamRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: DreamKVCache | None = None,
        cache_start: int | None = None,
    ) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(
            self.input_layernorm(hidden_states), attention_mask, position_embeddings, cache, cache_start
        )
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class DreamPreTrainedModel(PreTrainedModel):
    """Shared weight initialisation and transformers plumbing."""

    config_class = DreamConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DreamDecoderLayer"]
    _supports_sdpa = True

    # transformers.initialization's functions skip tensors that from_pretrained already loaded.
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, DreamRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, DreamRotaryEmbedding):
            # A non-persistent buffer is not in the checkpoint: recompute it after meta-device loading.
            init.copy_(module.inv_freq, module.inverse_frequencies(module.config))


def to_attention_bias(attention_mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """Turn a [B, N] padding mask (1 = real token) into SDPA's boolean [B, 1, 1, N] key mask.

    A 4-D mask (boolean or additive) passes through unchanged. Every query, pads included, sees the
    real keys only; unlike a [B, 1, N, N] mask that also hides pad *queries*, no row is fully masked,
    so SDPA never yields NaN at pad positions (which could leak into real rows as 0 * NaN).
    """
    if attention_mask is None:
        return None
    if attention_mask.dim() == 4:
        return attention_mask
    if attention_mask.dim() != 2 or attention_mask.shape[-1] != length:
        raise ValueError(
            f"attention_mask must be [batch, {length}] or 4-D, got shape {tuple(attention_mask.shape)}"
        )
    if bool(attention_mask.all()):
        return None
    return attention_mask.bool()[:, None, None, :]


class DreamBaseModel(DreamPreTrainedModel):
    """Embeddings, decoder layers and the final norm (the `model.` prefix of Dream's weights)."""

    def __init__(self, config: DreamConfig) -> None:
        super().__init__(config)
        # No padding_idx: pad is also EOS here, and a padding_idx would freeze EOS's embedding.
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions = (
            nn.Embedding(config.max_position_embeddings, config.hidden_size)
            if config.absolute_position_embeddings else None
        )
        self.layers = nn.ModuleList(DreamDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = DreamRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = DreamRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: DreamKVCache | None = None,
        cache_start: int | None = None,
    ) -> torch.Tensor:
        """Final hidden states. With `cache_start`, the input is the window of a sequence whose other
        positions `cache` holds (attention_mask then covers the whole sequence); with a `cache` and no
        start, this forward fills it."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        hidden_states = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        batch, length = hidden_states.shape[:2]
        start, keys = 0, length
        if cache_start is not None:
            if cache is None or not cache.layers:
                raise ValueError("cache_start needs a filled cache (the .cache of a use_cache forward)")
            if not 0 <= cache_start <= cache.length - length:
                raise ValueError(f"a window of {length} positions at {cache_start} does not fit a cache of {cache.length}")
            start, keys = cache_start, cache.length
        if position_ids is None:
            position_ids = torch.arange(start, start + length, device=hidden_states.device).expand(batch, length)
        if self.embed_positions is not None:
            if start + length > self.config.max_position_embeddings:
                raise ValueError(
                    f"sequence of {start + length} tokens is longer than this model's {self.config.max_position_embeddings} "
                    "learned positions (config max_position_embeddings): lower data.max_length or the prompt length"
                )
            hidden_states = hidden_states + self.embed_positions(position_ids)
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        bias = to_attention_bias(attention_mask, keys)
        for layer in self.layers:
            hidden_states = layer(hidden_states, bias, position_embeddings, cache, cache_start)
        return self.norm(hidden_states)


class DreamModel(DreamPreTrainedModel):
    """The full model: `model` (the transformer) and an untied `lm_head`; returns `.logits`.

    Logits follow Dream's convention: position i predicts token i + 1 (callers shift them).
    """

    _tied_weights_keys: dict[str, str] = {}

    def __init__(self, config: DreamConfig) -> None:
        super().__init__(config)
        self.model = DreamBaseModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: DreamKVCache | None = None,
        use_cache: bool | None = None,
        cache_start: int | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> DreamModelOutput:
        """Logits for every input position, or for the last `logits_to_keep` ones (0: all; transformers' convention).

        `use_cache=True` (without a cache) also returns this forward's keys and values as `.cache`; with
        `cache` and `cache_start`, the input is the window [cache_start, cache_start + n)
        of the cached sequence, and position_ids / attention_mask follow the model's usual rules
        (position_ids for the window, a padding mask over the whole sequence).
        """
        if kwargs.get("output_attentions") or kwargs.get("output_hidden_states"):
            raise NotImplementedError("DreamModel returns logits only (no attentions or hidden states)")
        if (cache is None) != (cache_start is None):
            raise ValueError("pass cache and cache_start together (a window of a cached sequence)")
        filled = DreamKVCache() if use_cache and cache is None else None
        hidden_states = self.model(input_ids, attention_mask, position_ids, inputs_embeds, cache or filled, cache_start)
        if logits_to_keep:
            hidden_states = hidden_states[:, -logits_to_keep:]
        return DreamModelOutput(logits=self.lm_head(hidden_states), cache=filled)
