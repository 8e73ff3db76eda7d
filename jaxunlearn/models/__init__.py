"""Llama-family models in Flax NNX and their weights."""

from jaxunlearn.models.io import load_pretrained, load_tokenizer, save_pretrained
from jaxunlearn.models.kv_cache import KVCache
from jaxunlearn.models.llama import Llama, LlamaConfig, LlamaOutput
from jaxunlearn.models.llama_config import RopeScaling

__all__ = ["Llama", "LlamaConfig", "LlamaOutput", "KVCache", "RopeScaling",
           "load_pretrained", "save_pretrained", "load_tokenizer"]
