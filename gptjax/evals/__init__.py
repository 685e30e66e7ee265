"""Evaluation pieces: degeneration measures, win rates, GSM8K, judges, answers, perplexity."""
