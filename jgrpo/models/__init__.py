"""Hugging Face decoder families in JAX: Qwen2/Qwen2.5, Qwen3 and Llama 3, loaded from local checkpoints.

::

    model_fn, params = jgrpo.models.from_pretrained(path, dtype=jnp.float32)
    logits = model_fn(params, input_ids)                         # int32 [B, L] -> float32 [B, L, V]
    logits = model_fn(params, input_ids, attention_mask=mask)    # 0/1 padding mask
    logp = jgrpo.models.logprob_fn(model_fn)(params, tokens, prompt)   # [B, G, T], the policies protocol
    samples = jgrpo.sample(jgrpo.models.decoder(model_fn), params, prompt, key, group_size=G, max_len=T)

Pure functions of an explicit parameter dict (:mod:`jgrpo.models.transformer`); the
layers are stacked and run as one ``lax.scan``; ``remat=True`` rematerialises each layer.
Loading reads safetensors only, with a NumPy reader (:mod:`jgrpo.models.safetensors`):
neither torch nor transformers is needed to load or run a checkpoint.
"""

from jgrpo.models.config import ModelConfig, config_from_hf, load_config
from jgrpo.models.loading import from_pretrained, load_params
from jgrpo.models.policy import (
    Decoder,
    NNXDecoder,
    Prompt,
    TabularDecoder,
    decoder,
    logprob_and_entropy_fn,
    logprob_fn,
    nnx_decoder,
    tabular_decoder,
)
from jgrpo.models.transformer import KVCache, decode, forward, init_cache, init_params, model_fn, param_shapes

__all__ = [
    "Decoder",
    "KVCache",
    "ModelConfig",
    "NNXDecoder",
    "Prompt",
    "TabularDecoder",
    "config_from_hf",
    "decode",
    "decoder",
    "forward",
    "from_pretrained",
    "init_cache",
    "init_params",
    "load_config",
    "load_params",
    "logprob_and_entropy_fn",
    "logprob_fn",
    "model_fn",
    "nnx_decoder",
    "param_shapes",
    "tabular_decoder",
]
