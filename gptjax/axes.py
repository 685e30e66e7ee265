"""Logical axis names: the only vocabulary the model uses to describe how its arrays may be split.

Parameters and activations carry these names; `gptjax.sharding` maps them to the physical mesh
axes (`data`, `fsdp`, `tensor`) with a rules table that lives in the config.
"""

# Parameter axes.
VOCAB = "vocab"  # (padded) vocabulary rows of the token embedding
EMBED = "embed"  # model width C of weight matrices
POS = "pos"  # rows of the position embedding
HEADS = "heads"  # attention heads in the qkv / output projections
HEAD_DIM = "head_dim"  # per-head width
QKV = "qkv"  # the 3 of the fused q/k/v projection
MLP = "mlp"  # the 4C hidden width of the MLP

# Activation axes (separate names so a parameter rule such as embed->fsdp never shards an
# activation along the axis its batch already uses).
BATCH = "batch"
SEQ = "seq"
ACT_EMBED = "act_embed"
ACT_HEADS = "act_heads"
ACT_MLP = "act_mlp"
ACT_VOCAB = "act_vocab"

# Default rules: batch over data and fsdp; weights sharded over fsdp on the model width
# (ZeRO-3 style) and over tensor on heads / mlp / vocab (Megatron style).
DEFAULT_RULES = (
    (BATCH, ("data", "fsdp")),
    (SEQ, None),
    (ACT_EMBED, None),
    (ACT_HEADS, "tensor"),
    (ACT_MLP, "tensor"),
    (ACT_VOCAB, "tensor"),
    (VOCAB, "tensor"),
    (EMBED, "fsdp"),
    (POS, None),
    (HEADS, "tensor"),
    (HEAD_DIM, None),
    (QKV, None),
    (MLP, "tensor"),
)
