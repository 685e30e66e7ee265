"""Data: tokenizers, corpus preparation and grain pipelines per stage. Knows nothing of the model."""
