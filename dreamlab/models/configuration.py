"""The configuration of a Dream-architecture model (the same keys as Dream-v0's `config.json`)."""

from __future__ import annotations

from transformers import PretrainedConfig

# Dream's published config.json says "model_type": "Dream"; registering our class under the same
# name is what lets a downloaded Dream-v0 folder load into it without trust_remote_code.
DREAM_MODEL_TYPE = "Dream"


class DreamConfig(PretrainedConfig):
    """Hyper-parameters of a Qwen2.5-style bidirectional transformer as Dream-v0 uses them."""

    model_type = DREAM_MODEL_TYPE
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 152064,
        hidden_size: int = 3584,
        intermediate_size: int = 18944,
        num_hidden_layers: int = 28,
        num_attention_heads: int = 28,
        num_key_value_heads: int = 4,
        hidden_act: str = "silu",
        max_position_embeddings: int = 131072,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        rope_theta: float = 1_000_000.0,
        attention_dropout: float = 0.0,
        head_dim: int | None = None,
        mask_token_id: int | None = 151666,
        pad_token_id: int | None = 151643,
        eos_token_id: int | None = 151643,
        bos_token_id: int | None = 151643,
        tie_word_embeddings: bool = False,
        use_cache: bool = False,
        absolute_position_embeddings: bool = False,
        **kwargs,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.attention_dropout = attention_dropout
        self.head_dim = head_dim if head_dim is not None else hidden_size // num_attention_heads
        self.mask_token_id = mask_token_id
        self.use_cache = use_cache
        # A dreamlab extension for the tiny preset, off in every Dream checkpoint: learned absolute
        # position embeddings added to the token embeddings, on top of RoPE.
        self.absolute_position_embeddings = absolute_position_embeddings
        # Dream's config carries keys this class does not use (sliding window, rope_scaling, ...);
        # PretrainedConfig keeps unknown keys as attributes, so they survive a save/load round trip.
        super().__init__(
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
            bos_token_id=bos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self._validate_shapes()
        self._refuse_unsupported()

    def _refuse_unsupported(self) -> None:
        rope_scaling = getattr(self, "rope_scaling", None)
        if rope_scaling and rope_scaling.get("rope_type", rope_scaling.get("type", "default")) != "default":
            raise ValueError(f"rope_scaling {rope_scaling} is not supported by dreamlab's Dream model (plain RoPE only)")
        if getattr(self, "use_sliding_window", False):
            raise ValueError("use_sliding_window=true is not supported by dreamlab's Dream model (full attention only)")

    def to_dict(self) -> dict:
        """Serialise without Dream's `auto_map`: the remote files it names are not saved with us."""
        data = super().to_dict()
        data.pop("auto_map", None)
        return data

    def _validate_shapes(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even for rotary embeddings")
