"""`python -m gptjax.convert`: GPT-2 weights in Hugging Face layout (safetensors) in and out.

    python -m gptjax.convert --from-hf HF_DIR --workdir DIR   # HF -> a gptjax workdir at step 0
    python -m gptjax.convert --workdir DIR --to-hf OUT_DIR    # DIR's latest checkpoint -> HF
    python -m gptjax.convert --workdir DIR --merge-lora OUT   # LoRA workdir -> a plain workdir

HF_DIR is what `GPT2LMHeadModel.save_pretrained` writes: config.json and model.safetensors (or
shards listed in model.safetensors.index.json). HF's Conv1D stores weights as (in, out), the
same orientation as gptjax kernels, so every tensor maps by a reshape alone (C width, H heads,
D = C / H, V vocabulary, V' = V padded to model.vocab_multiple, T positions):

    wte.weight (V, C)                  <-> wte.embedding (V', C), rows V..V'-1 zero
    wpe.weight (T, C)                  <-> wpe.embedding (T, C)
    h.i.ln_1.weight / .bias (C,)       <-> h_i.ln_1.scale / .bias (ln_2 and ln_f alike)
    h.i.attn.c_attn.weight (C, 3C)     <-> h_i.attn.c_attn.kernel (C, 3, H, D)
    h.i.attn.c_attn.bias (3C,)         <-> h_i.attn.c_attn.bias (3, H, D)
    h.i.attn.c_proj.weight (C, C)      <-> h_i.attn.c_proj.kernel (H, D, C)
    h.i.mlp.c_fc.weight (C, 4C)        <-> h_i.mlp.c_fc.kernel (C, 4C), c_proj (4C, C) alike

HF orders the 3C outputs of c_attn as [q | k | v], each H blocks of D columns, so output column
j = s·C + h·D + d is entry (s, h, d) of the row-major (3, H, D) view. Reshapes never round, so
HF -> gptjax -> HF is bit-exact. The output head is tied to wte in both (lm_head.weight = wte).
This module reads and writes with safetensors' numpy API only (no torch, no transformers).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from gptjax import workdir as workdir_lib
from gptjax.cli import ArgumentParser, check_output_dir, exit_on_user_error
from gptjax.data.hf_tokenizer import HFTokenizer
from gptjax.data.tokenizer import save_tokenizer
from gptjax.errors import GptjaxError
from gptjax.model import GPTConfig

USAGE = ("usage: python -m gptjax.convert --from-hf HF_DIR --workdir DIR\n"
         "       python -m gptjax.convert --workdir DIR --to-hf OUT_DIR\n"
         "       python -m gptjax.convert --workdir DIR --merge-lora OUT_DIR")
# HF activation_function -> gptjax model.activation (gelu_new and gelu_pytorch_tanh are both
# the tanh approximation; gelu is the exact erf form).
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of old checkpoints
Layout = list[tuple[str, tuple[str, ...], tuple[int, ...], tuple[int, ...]]]


def layout(m: GPTConfig) -> Layout:
    """Every tensor as (HF key without 'transformer.', gptjax param path, HF shape, gptjax shape).

    The one exception to "gptjax shape = HF shape reshaped" is wte, padded from V to V' rows.
    """
    c, h, d, f = m.n_embd, m.n_head, m.head_dim, 4 * m.n_embd
    rows: Layout = [("wte.weight", ("wte", "embedding"), (m.vocab_size, c),
                     (m.padded_vocab_size, c)),
                    ("wpe.weight", ("wpe", "embedding"), (m.block_size, c), (m.block_size, c))]

    def layer_norm(hf: str, path: tuple[str, ...]) -> Layout:
        return [(f"{hf}.weight", path + ("scale",), (c,), (c,)),
                (f"{hf}.bias", path + ("bias",), (c,), (c,))]

    for i in range(m.n_layer):
        hf, jx = f"h.{i}", f"h_{i}"
        rows += layer_norm(f"{hf}.ln_1", (jx, "ln_1")) + layer_norm(f"{hf}.ln_2", (jx, "ln_2"))
        rows += [
            (f"{hf}.attn.c_attn.weight", (jx, "attn", "c_attn", "kernel"), (c, 3 * c),
             (c, 3, h, d)),
            (f"{hf}.attn.c_attn.bias", (jx, "attn", "c_attn", "bias"), (3 * c,), (3, h, d)),
            (f"{hf}.attn.c_proj.weight", (jx, "attn", "c_proj", "kernel"), (c, c), (h, d, c)),
            (f"{hf}.attn.c_proj.bias", (jx, "attn", "c_proj", "bias"), (c,), (c,)),
            (f"{hf}.mlp.c_fc.weight", (jx, "mlp", "c_fc", "kernel"), (c, f), (c, f)),
            (f"{hf}.mlp.c_fc.bias", (jx, "mlp", "c_fc", "bias"), (f,), (f,)),
            (f"{hf}.mlp.c_proj.weight", (jx, "mlp", "c_proj", "kernel"), (f, c), (f, c)),
            (f"{hf}.mlp.c_proj.bias", (jx, "mlp", "c_proj", "bias"), (c,), (c,)),
        ]
    return rows + layer_norm("ln_f", ("ln_f",))


def _read_json(path: str, what: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise GptjaxError(f"{path} not found: {what}")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise GptjaxError(f"{path} is not readable JSON ({e}); {what}") from None
    if not isinstance(data, dict):
        raise GptjaxError(f"{path} should hold a JSON object; {what}")
    return data


def read_hf_config(hf_dir: str) -> GPTConfig:
    """HF_DIR/config.json -> the gptjax model it describes; GPT-2 variants gptjax cannot run
    exactly (other activations, untied head, unscaled attention, ...) are refused."""
    if not os.path.isdir(hf_dir):
        raise GptjaxError(f"--from-hf {hf_dir}: no such directory. Pass the folder that "
                          "GPT2LMHeadModel.save_pretrained wrote (config.json and "
                          "model.safetensors).")
    path = os.path.join(hf_dir, "config.json")
    hf = _read_json(path, "the Hugging Face GPT-2 config (as save_pretrained writes it) is needed")
    missing = [k for k in ("n_embd", "n_layer", "n_head", "vocab_size") if k not in hf]
    if "n_positions" not in hf and "n_ctx" not in hf:
        missing.append("n_positions")
    if missing:
        raise GptjaxError(f"{path} lacks {missing}; is it a GPT-2 config?")
    for key in ("n_embd", "n_layer", "n_head", "vocab_size", "n_positions", "n_ctx"):
        value = hf.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise GptjaxError(f"{path}: {key}={value!r} should be a positive integer; is it a "
                              "GPT-2 config?")
    checks = [  # (key, default in transformers' GPT2Config, allowed values, what gptjax does)
        ("model_type", "gpt2", ("gpt2",), "only GPT-2 models convert"),
        ("activation_function", "gelu_new", tuple(ACTIVATIONS), "gptjax's MLP uses GELU"),
        ("n_inner", None, (None, 4 * hf["n_embd"]), "gptjax's MLP is 4 * n_embd wide"),
        ("scale_attn_weights", True, (True,), "gptjax scales attention by 1/sqrt(head_dim)"),
        ("scale_attn_by_inverse_layer_idx", False, (False,),
         "gptjax does not scale attention by layer"),
        ("add_cross_attention", False, (False,), "gptjax is decoder-only"),
        ("tie_word_embeddings", True, (True,), "gptjax ties the output head to wte"),
    ]
    for key, default, allowed, why in checks:
        value = hf.get(key, default)
        if value not in allowed:
            raise GptjaxError(f"{path}: {key}={value!r} is not supported ({why}; supported: "
                              f"{list(allowed)}). This checkpoint cannot be converted exactly.")
    if hf["n_embd"] % hf["n_head"]:
        raise GptjaxError(f"{path}: n_embd={hf['n_embd']} is not divisible by "
                          f"n_head={hf['n_head']}")
    return GPTConfig(vocab_size=int(hf["vocab_size"]),
                     block_size=int(hf.get("n_positions", hf.get("n_ctx"))),
                     n_layer=int(hf["n_layer"]), n_head=int(hf["n_head"]),
                     n_embd=int(hf["n_embd"]), bias=True,
                     activation=ACTIVATIONS[hf.get("activation_function", "gelu_new")],
                     ln_eps=float(hf.get("layer_norm_epsilon", 1e-5)), dtype="float32")


def _safetensors_files(hf_dir: str) -> list[str]:
    single = os.path.join(hf_dir, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        weight_map = _read_json(index, "the shard index is corrupt").get("weight_map", {})
        return [os.path.join(hf_dir, name) for name in sorted(set(weight_map.values()))]
    others = sorted(n for n in os.listdir(hf_dir) if n.endswith((".bin", ".h5", ".msgpack")))
    hint = (f" It holds {others}: load it with transformers and re-save it with "
            "save_pretrained(dir, safe_serialization=True).") if others else ""
    raise GptjaxError(f"{single} not found (nor model.safetensors.index.json); gptjax reads "
                      f"GPT-2 weights in safetensors only.{hint}")


def load_hf_tensors(hf_dir: str) -> dict[str, np.ndarray]:
    """All GPT-2 tensors of HF_DIR, keys without the 'transformer.' prefix, mask buffers and the
    tied lm_head dropped (after checking it really equals wte)."""
    tensors: dict[str, np.ndarray] = {}
    for path in _safetensors_files(hf_dir):
        if not os.path.isfile(path):
            raise GptjaxError(f"{path} (listed in model.safetensors.index.json) not found")
        try:
            with safe_open(path, framework="numpy") as f:
                for key in f.keys():
                    name = key.removeprefix("transformer.")
                    if not name.endswith(IGNORED_SUFFIXES):
                        tensors[name] = f.get_tensor(key)
        except (OSError, ValueError, RuntimeError) as e:
            raise GptjaxError(f"{path} could not be read as safetensors ({e})") from None
    head = tensors.pop("lm_head.weight", None)
    if head is not None and not (
            "wte.weight" in tensors and head.shape == tensors["wte.weight"].shape
            and np.array_equal(head, tensors["wte.weight"])):
        raise GptjaxError(f"{hf_dir}: lm_head.weight differs from transformer.wte.weight; gptjax "
                          "ties the output head to the token embedding, so an untied head "
                          "cannot be converted exactly.")
    return tensors


def hf_to_params(tensors: dict[str, np.ndarray], m: GPTConfig) -> dict[str, Any]:
    """HF tensors -> gptjax's nested float32 param dict (numpy), every key and shape checked."""
    rows = layout(m)
    expected = {hf for hf, *_ in rows}
    unknown, missing = sorted(set(tensors) - expected), sorted(expected - set(tensors))
    if unknown or missing:
        raise GptjaxError(
            f"the safetensors keys do not match a GPT-2 with n_layer={m.n_layer}: unknown keys "
            f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}, missing keys {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}. Is config.json the one saved with these "
            "weights?")
    params: dict[str, Any] = {}
    for hf, path, hf_shape, shape in rows:
        x = tensors[hf]
        if x.shape != hf_shape:
            raise GptjaxError(f"tensor {hf} has shape {x.shape} but config.json implies "
                              f"{hf_shape}; the weights and config.json do not belong together.")
        x = np.asarray(x, dtype=np.float32)  # gptjax keeps float32 master weights
        if hf == "wte.weight":  # zero rows up to the padded vocabulary
            x = np.concatenate([x, np.zeros((shape[0] - x.shape[0], shape[1]), np.float32)])
        node = params
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = x.reshape(shape)
    return params


def params_to_hf(params: dict[str, Any], m: GPTConfig) -> dict[str, np.ndarray]:
    """gptjax params -> HF tensors named as save_pretrained names them; vocab padding sliced."""
    out = {}
    for hf, path, hf_shape, _ in layout(m):
        x = params
        for k in path:
            x = x[k]
        x = np.asarray(x)
        if hf == "wte.weight":
            x = x[:m.vocab_size]
        out[f"transformer.{hf}"] = np.ascontiguousarray(x.reshape(hf_shape))
    return out


def hf_config(m: GPTConfig) -> dict[str, Any]:
    """The config.json that makes transformers' GPT2LMHeadModel compute what gptjax computes."""
    eos = 50256 if m.vocab_size > 50256 else None  # GPT-2's <|endoftext|>, when it exists
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": m.vocab_size, "n_positions": m.block_size, "n_embd": m.n_embd,
        "n_layer": m.n_layer, "n_head": m.n_head, "n_inner": None,
        "activation_function": "gelu_new" if m.activation == "gelu_tanh" else "gelu",
        "layer_norm_epsilon": m.ln_eps,
        "resid_pdrop": m.dropout, "embd_pdrop": m.dropout, "attn_pdrop": m.dropout,
        "initializer_range": 0.02, "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True, "bos_token_id": eos, "eos_token_id": eos,
        "use_cache": True, "dtype": "float32",
    }


def _has_checkpoints(workdir: str) -> bool:
    directory = os.path.join(workdir, "checkpoints")
    return os.path.isdir(directory) and any(
        n.isdigit() for n in os.listdir(directory))


def from_hf(hf_dir: str, workdir: str) -> bool:
    """Write a gptjax workdir (config.json + a step-0 checkpoint of the full train state) from
    Hugging Face GPT-2 weights, so `python -m gptjax.train --workdir DIR` resumes from them,
    and its tokenizer.json from the folder's tokenizer files when it has them (True then)."""
    import jax
    import jax.numpy as jnp

    from gptjax import config as config_lib, step as step_lib
    from gptjax.checkpoint import Checkpointer
    from gptjax.data import lm as lm_data
    from gptjax.loops import pretrain

    m = read_hf_config(hf_dir)
    tok = HFTokenizer.from_folder(hf_dir)  # GPT-2's vocabulary, read by HF `tokenizers`
    if tok is not None and tok.vocab_size > m.vocab_size:
        raise GptjaxError(f"the tokenizer in {hf_dir} has {tok.vocab_size} tokens but the model "
                          f"only {m.vocab_size} embedding rows: they do not belong together")
    check_output_dir(workdir, "--workdir")
    if _has_checkpoints(workdir):
        directory = os.path.join(workdir, "checkpoints")
        raise GptjaxError(f"--workdir {workdir} already holds checkpoints ({directory}); "
                          "converting into it would mix them with these weights. Pass a new "
                          "--workdir, or move the old one aside.")
    params = hf_to_params(load_hf_tensors(hf_dir), m)
    config = config_lib.base_config()
    for key, value in dataclasses.asdict(m).items():
        config.model[key] = value
    # The state is laid out exactly as the pretrain stage lays it out, on a pure data-parallel
    # mesh (one device: (1, 1, 1)), so every parameter is whole on each device; training
    # restores it into any mesh (orbax reshards). A batch of one row per device keeps build()'s
    # batch check satisfied however many devices there are.
    layout_config = copy.deepcopy(config)
    layout_config.mesh.update(dict(data=-1, fsdp=1, tensor=1))
    layout_config.train.update(dict(batch_size=jax.device_count(), grad_accum=1))
    pieces = pretrain.build(layout_config)
    abstract = pieces.abstract
    shardings = step_lib.shardings_of(abstract)
    want = {jax.tree_util.keystr(p): s.shape
            for p, s in jax.tree_util.tree_flatten_with_path(abstract.params)[0]}
    got = {jax.tree_util.keystr(p): x.shape
           for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    if want != got:  # layout() and the model disagree: a gptjax bug, not the user's
        raise GptjaxError(f"internal error: converted params {sorted(set(got) ^ set(want))[:5]} "
                          "do not match gptjax's model; please report it.")
    params = jax.device_put(params, shardings.params)
    state = step_lib.TrainState(
        step=jax.device_put(jnp.zeros((), jnp.int32), shardings.step), params=params,
        opt_state=jax.jit(pieces.tx.init, out_shardings=shardings.opt_state)(params))
    if jax.tree.structure(state) != jax.tree.structure(abstract):
        raise GptjaxError("internal error: the converted train state does not have the layout "
                          "of gptjax.loops.pretrain.build; please report it.")
    os.makedirs(workdir, exist_ok=True)
    workdir_lib.write_config(config, workdir)
    if tok is not None:
        save_tokenizer(tok, os.path.join(workdir, workdir_lib.TOKENIZER_FILE))
    # The pretrain stage resumes {state, data position}: no data is consumed yet, so the saved
    # position is that of a fresh training iterator (its state is the next batch index, 0).
    seq_len, procs = config_lib.seq_len(config), jax.process_count()
    data_iter = lm_data.train_iterator(np.zeros(seq_len + 2, np.uint16), seq_len, procs,
                                       config.seed, jax.process_index(), procs)
    ckpt = Checkpointer(workdir, keep=config.train.keep_checkpoints, async_save=False)
    try:
        ckpt.save(0, state, data_iter)
        ckpt.wait()
    finally:
        ckpt.close()
    return tok is not None


def read_workdir_model(workdir: str) -> GPTConfig:
    """The workdir's model config, checked to be one Hugging Face GPT-2 can express."""
    m = workdir_lib.model_config(workdir)
    workdir_lib.check_language_model(workdir)
    path = os.path.join(workdir, "config.json")
    if not m.bias or m.local_window or m.n_embd % m.n_head:
        raise GptjaxError(f"{path}: model.bias={m.bias}, model.local_window={m.local_window}: "
                          "only GPT-2 shaped models (bias=True, local_window=0) convert to "
                          "Hugging Face GPT-2")
    return m


def to_hf(workdir: str, out_dir: str) -> int:
    """Write DIR's latest checkpoint as OUT_DIR/model.safetensors + config.json; returns its step.

    Only the parameters are read from the checkpoint (not the optimizer state)."""
    import jax.numpy as jnp

    from gptjax.model import GPT

    m = read_workdir_model(workdir)
    check_output_dir(out_dir, "--to-hf")
    taken = [n for n in ("model.safetensors", "config.json")
             if os.path.exists(os.path.join(out_dir, n))]
    if taken:
        raise GptjaxError(f"--to-hf {out_dir} already holds {taken}; refusing to overwrite. "
                          "Pass an empty or new folder.")
    # (a LoRA workdir: its base with the adapters merged in)
    step, params = workdir_lib.restore_model(workdir, GPT(m), (jnp.zeros((1, 1), jnp.int32),))
    tensors = params_to_hf(params, m)
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config(m), f, indent=2)
    return step


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m gptjax.convert", usage=USAGE.removeprefix("usage: "),
        description="Convert GPT-2 weights between Hugging Face safetensors and a gptjax workdir.")
    parser.add_argument("--workdir", required=True, help="the gptjax workdir (in or out)")
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from-hf", metavar="HF_DIR",
                           help="import: a folder written by GPT2LMHeadModel.save_pretrained")
    direction.add_argument("--to-hf", metavar="OUT_DIR",
                           help="export DIR's latest checkpoint into this folder")
    direction.add_argument("--merge-lora", metavar="OUT_DIR",
                           help="write DIR's LoRA-adapted model as a plain workdir")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.from_hf is not None:
        with_tok = from_hf(args.from_hf, args.workdir)
        print(f"wrote {args.workdir}: config.json and a step-0 checkpoint from {args.from_hf}"
              + ("; tokenizer.json from its tokenizer files" if with_tok else
                 " (it has no tokenizer.json or vocab.json + merges.txt: sample, chat and "
                 "fine-tuning need one)"))
    elif args.merge_lora is not None:
        step = workdir_lib.merge_lora(args.workdir, args.merge_lora)
        print(f"wrote {args.merge_lora}: a plain workdir of {args.workdir}'s adapters merged "
              f"into their base (step {step})")
    else:
        step = to_hf(args.workdir, args.to_hf)
        print(f"wrote {args.to_hf}: model.safetensors and config.json from step {step}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
