"""A Dream-compatible model: Qwen2.5 blocks with bidirectional attention, Dream's parameter names.

The module tree (`model.embed_tokens`, `model.layers.N.self_attn.q_proj`, ..., `lm_head`) is the
one Dream-v0's safetensors use, so a downloaded checkpoint folder loads with `from_pretrained`
and no remote code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import MaskedLMOutput

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


class DreamAttention(nn.Module):
    """Bidirectional grouped-query attention through torch's SDPA (no causal mask)."""

    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
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
    ) -> torch.Tensor:
        batch, length, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, k, *position_embeddings)
        groups = self.num_heads // self.num_kv_heads
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=attention_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=False,
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

    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        self.self_attn = DreamAttention(config)
        self.mlp = DreamMLP(config)
        self.input_layernorm = DreamRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = DreamRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(
            self.input_layernorm(hidden_states), attention_mask, position_embeddings
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
        self.layers = nn.ModuleList(DreamDecoderLayer(config) for _ in range(config.num_hidden_layers))
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
    ) -> torch.Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        hidden_states = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        batch, length = hidden_states.shape[:2]
        if position_ids is None:
            position_ids = torch.arange(length, device=hidden_states.device).expand(batch, length)
        if self.embed_positions is not None:
            if length > self.config.max_position_embeddings:
                raise ValueError(
                    f"sequence of {length} tokens is longer than this model's {self.config.max_position_embeddings} "
                    "learned positions (config max_position_embeddings): lower data.max_length or the prompt length"
                )
            hidden_states = hidden_states + self.embed_positions(position_ids)
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        bias = to_attention_bias(attention_mask, length)
        for layer in self.layers:
            hidden_states = layer(hidden_states, bias, position_embeddings)
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
        **kwargs,
    ) -> MaskedLMOutput:
        """Logits for every position; generation-only keywords (use_cache, return_dict) are ignored."""
        if kwargs.get("output_attentions") or kwargs.get("output_hidden_states"):
            raise NotImplementedError("DreamModel returns logits only (no attentions or hidden states)")
        hidden_states = self.model(input_ids, attention_mask, position_ids, inputs_embeds)
        return MaskedLMOutput(logits=self.lm_head(hidden_states))
