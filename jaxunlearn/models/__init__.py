"""Llama-family models in Flax NNX and their weights."""

from jaxunlearn.models.io import load_pretrained, load_tokenizer, save_pretrained
from jaxunlearn.models.llama import KVCache, Llama, LlamaConfig, LlamaOutput, RopeScaling

__all__ = ["Llama", "LlamaConfig", "LlamaOutput", "KVCache", "RopeScaling",
           "load_pretrained", "save_pretrained", "load_tokenizer"]
