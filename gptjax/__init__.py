"""gptjax: the ChatGPT recipe (pretrain, SFT, reward model, PPO) as sharded, jitted JAX."""

__version__ = "0.1.0"
