"""One short loop per stage: `run(config, workdir)`, importable from Colab."""
