"""Base config: GPT-2 124M shape on the shipped Tiny Shakespeare (see gptjax/config.py for keys)."""

from gptjax.config import base_config


def get_config():
    return base_config()
