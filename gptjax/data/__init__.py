"""Data: tokenizers, corpus preparation, grain pipelines per stage. Knows nothing of the model."""
