"""A tiny Qwen2 causal LM written as a GGUF file with the `gguf` package's writer (as llama.cpp
lays one out: metadata, a byte-level BPE tokenizer, tensors under GGUF names, the MLP in Q8_0)."""

import numpy as np
import torch
import transformers as tf

MERGES = ["Ġ t", "h e", "Ġt he", "i s"]


def tiny_qwen2(seed: int = 0) -> tuple[tf.Qwen2ForCausalLM, list[str]]:
    """A 2-layer, 64-wide Qwen2ForCausalLM (GQA 4/2 heads, untied head) and its token list."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = [*bytes_to_unicode().values(), *(m.replace(" ", "") for m in MERGES)]
    tokens.append("<|endoftext|>")
    torch.manual_seed(seed)
    cfg = tf.Qwen2Config(
        vocab_size=len(tokens), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128,
        tie_word_embeddings=False, bos_token_id=len(tokens) - 1, eos_token_id=len(tokens) - 1,
    )  # fmt: skip
    model = tf.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model, tokens


def write_gguf(model: tf.Qwen2ForCausalLM, tokens: list[str], path) -> tf.Qwen2ForCausalLM:
    """Write `model` as a GGUF at `path`; returns the model with the weights the file holds (the
    MLP matrices quantised to Q8_0 and back, the rest float32 as is)."""
    import gguf

    cfg = model.config
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_name("tiny-qwen2")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([1] * (len(tokens) - 1) + [3])  # the last one is a control token
    w.add_token_merges(MERGES)
    w.add_bos_token_id(len(tokens) - 1)
    w.add_eos_token_id(len(tokens) - 1)
    w.add_pad_token_id(len(tokens) - 1)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, cfg.num_hidden_layers)
    held = {}
    for key, value in model.state_dict().items():
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        array = value.numpy().astype(np.float32)
        if ".mlp." in key:
            q8 = gguf.GGMLQuantizationType.Q8_0
            packed = gguf.quants.quantize(array, q8)
            w.add_tensor(name, packed, raw_dtype=q8)
            array = gguf.quants.dequantize(packed, q8).reshape(array.shape)
        else:
            w.add_tensor(name, array)
        held[key] = torch.from_numpy(np.ascontiguousarray(array))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = tf.Qwen2ForCausalLM(model.config).eval()
    out.load_state_dict(held)
    return out


def split(path, parts: int, folder) -> list:
    """`path` cut into `parts` files of about equal size, in order."""
    data = path.read_bytes()
    cut = [len(data) * i // parts for i in range(parts + 1)]
    files = []
    for i in range(parts):
        files.append(folder / f"{path.name}.part{i:02d}")
        files[-1].write_bytes(data[cut[i] : cut[i + 1]])
    return files
