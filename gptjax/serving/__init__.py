"""gptjax.serve pieces: batch slots (slots), the decode thread (engine), OpenAI routes (app)."""
