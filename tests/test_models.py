import json
import urllib.request

import pytest
import torch

from tokenforget import models
from tokenforget.config import LoraSettings, ModelSettings
from tokenforget.errors import ModelError


def test_manifest_detects_truncation_extra_files_and_tampering(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x" * 1000)
    (folder / "config.json").write_text("{}")
    assert not models.verify_manifest(folder)  # no manifest = unfinished
    models.write_manifest(folder)
    assert models.verify_manifest(folder)
    (folder / "model.safetensors").write_bytes(b"x" * 999)  # a partial copy
    assert not models.verify_manifest(folder)
    models.write_manifest(folder)
    (folder / "stray.bin").write_bytes(b"1")
    assert not models.verify_manifest(folder)
    (folder / "stray.bin").unlink()
    (folder / models.MANIFEST).write_text("{not json")
    assert not models.verify_manifest(folder)


def test_corrupt_conversion_is_redone_valid_one_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENFORGET_CACHE", str(tmp_path))
    calls = []

    def fake_convert(gguf, target):
        calls.append(gguf)
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
        models.write_manifest(target)

    monkeypatch.setattr(models, "convert_gguf", fake_convert)
    target = models.embedded_model_dir()
    target.mkdir(parents=True)
    (target / "model.safetensors").write_bytes(b"half")  # a crash mid-conversion left this
    assert models.ensure_embedded_model(log=False) == target
    assert len(calls) == 1 and not (target / "model.safetensors").exists()
    models.ensure_embedded_model(log=False)
    assert len(calls) == 1  # valid: reused, not converted again
    (target / "config.json").write_text('{"tampered": 1}')
    models.ensure_embedded_model(log=False)
    assert len(calls) == 2


def test_converted_model_is_a_plain_float_checkpoint(smollm_dir):
    config = json.loads((smollm_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama"
    assert models.verify_manifest(smollm_dir)
    manifest = json.loads((smollm_dir / models.MANIFEST).read_text())
    assert manifest["source"]["file"].endswith(".gguf")


def test_gguf_is_parsed_once_per_conversion_and_gguf_is_restored_after():
    import gguf

    reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    path = models.embedded_gguf_path()
    with models._gguf_parsed_once():
        assert gguf.GGUFReader(path) is gguf.GGUFReader(str(path))
        arch = next(iter(gguf.MODEL_ARCH_NAMES))
        assert gguf.get_tensor_name_map(arch, 2) is gguf.get_tensor_name_map(arch, 2)
    assert gguf.GGUFReader is reader_class and gguf.get_tensor_name_map is name_map


def test_resolve_model_errors_are_actionable(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        models.resolve_model(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"has no config\.json"):
        models.resolve_model(str(tmp_path / "empty"))
    assert models.resolve_model("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"


def test_precision_auto_uses_autocast_only_with_native_bf16(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(models, "cpu_supports_bf16", lambda: False)
    plan = models.resolve_precision("auto", cpu)
    assert plan.weight_dtype == torch.float32 and plan.autocast_dtype is None and plan.label == "float32"
    monkeypatch.setattr(models, "cpu_supports_bf16", lambda: True)
    plan = models.resolve_precision("auto", cpu)
    assert plan.autocast_dtype == torch.bfloat16 and plan.label == "float32+autocast-bfloat16"
    assert models.resolve_precision("bf16", cpu).weight_dtype == torch.bfloat16
    if not torch.cuda.is_available():  # asking for a GPU that is not there is a clear error
        with pytest.raises(ModelError, match="no CUDA GPU"):
            models.resolve_device("cuda")


def test_lora_wrap_then_merged_save_keeps_the_function(tmp_path, tiny_llama_dir):
    model, tok, _ = models.load_model(ModelSettings(precision="fp32"), str(tiny_llama_dir))
    wrapped = models.wrap_lora(model, LoraSettings(r=4, alpha=8))
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # make the adapter do something
        ids = torch.tensor([[1, 500, 600, 700]])
        expected = wrapped(input_ids=ids).logits
    models.save_model(wrapped, tok, tmp_path / "merged")
    reloaded, _, _ = models.load_model(ModelSettings(precision="fp32"), str(tmp_path / "merged"))
    assert not any("lora" in k for k in reloaded.state_dict())
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, expected, atol=1e-4)


def _llama_cpp_complete(server, ids: list[int], n: int) -> dict:
    body = json.dumps(
        {
            "prompt": ids,
            "n_predict": n,
            "temperature": 0.0,
            "top_k": 1,
            "return_tokens": True,
            "cache_prompt": False,
            "ignore_eos": True,
            "n_probs": 1,
        }
    ).encode()
    request = urllib.request.Request(
        f"{server.listening_address}/completion", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_converted_model_greedy_equals_llama_cpp_on_the_same_gguf(smollm_dir):
    """20 greedy tokens of the safetensors conversion == llama.cpp's own (xllamacpp server over HTTP).

    Both get the same token ids. llama.cpp multiplies Q4_1 weights by 8-bit-quantised activations, so
    its logits differ from the de-quantised float model by ~0.1 nats: where two candidates are closer
    than that the two greedy paths may part. The fixed prompts below have no such near-tie in 20
    tokens and must agree exactly; on every prompt, llama.cpp's log-prob of each token it chose must
    match ours within 0.3 nats (a conversion bug, e.g. permuted q/k heads, breaks both checks).
    """
    xllamacpp = pytest.importorskip("xllamacpp")
    params = xllamacpp.CommonParams()
    params.model.path = str(models.embedded_gguf_path())
    params.n_ctx = 256
    params.n_parallel = 1
    params.cpuparams.n_threads = 2
    params.port = 0  # any free port
    server = xllamacpp.Server(params)
    model, tok, _ = models.load_model(ModelSettings(precision="fp32"), str(smollm_dir))

    def chat(question):
        return tok.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )

    exact = [
        "The capital of France is Paris. The capital of Germany is",
        chat("Who wrote Romeo and Juliet?"),
        chat("What is 2+2?"),
    ]
    near_ties = [chat("What is the capital of Italy?")]
    try:
        for prompt in exact + near_ties:
            ids = tok(prompt, add_special_tokens=False)["input_ids"]
            reply = _llama_cpp_complete(server, ids, 20)
            theirs = reply["tokens"]
            assert len(theirs) == 20
            with torch.no_grad():
                out = model.generate(
                    torch.tensor([ids]),
                    max_new_tokens=20,
                    min_new_tokens=20,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                )
                logp = model(torch.tensor([ids + theirs])).logits[0, len(ids) - 1 : -1].log_softmax(-1)
            ours = out[0, len(ids) :].tolist()
            if prompt in exact:
                assert ours == theirs, (tok.decode(ours), tok.decode(theirs))
            our_logp = logp[torch.arange(20), torch.tensor(theirs)]
            their_logp = torch.tensor([c["logprob"] for c in reply["completion_probabilities"]])
            assert (our_logp - their_logp).abs().max() < 0.3
            assert (our_logp - their_logp).abs().mean() < 0.08
    finally:
        del server
    assert "Berlin" in tok.decode(_first_tokens(model, tok, exact[0]))


def _first_tokens(model, tok, prompt):
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)[
            0, ids.shape[1] :
        ]


def test_packed_linears_match_the_plain_forward_and_restore_the_layers(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    ids = torch.randint(0, model.config.vocab_size, (3, 9))
    with torch.inference_mode():
        plain = model(ids).logits
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    with models.eval_mode(model):
        assert all("forward" in vars(m) for m in linears)  # every layer runs on its packed weight
        with torch.profiler.profile() as prof:
            packed = model(ids).logits
        with models.packed_linears(model) as nested:
            assert nested == 0  # already packed: nothing repacked
    assert not any("forward" in vars(m) for m in linears)  # the plain layers are back
    torch.testing.assert_close(packed, plain, rtol=1e-4, atol=1e-5)
    ran = {event.key for event in prof.key_averages()}
    assert "mkldnn::_linear_pointwise" in ran and "aten::linear" not in ran
    # autograd takes the plain path, so training never sees a packed (stale) weight
    with models.packed_linears(model) as count:
        assert count == len(linears)
        out = model(ids).logits.sum()
        out.backward()
    assert model.get_output_embeddings().weight.grad is not None
    with models.eval_mode(model, packed=False):
        assert not any("forward" in vars(m) for m in linears)
        assert torch.equal(model(ids).logits, plain)


@pytest.mark.parametrize("broken", ["missing", "wrong numbers"])
def test_without_working_onednn_ops_every_layer_takes_the_plain_path(tiny_llama_dir, monkeypatch, broken):
    """The private ops are looked up and checked in one place; when a torch release drops them or
    changes what they compute, packing is off and the numbers are exactly the plain forward's."""
    from transformers import AutoModelForCausalLM

    from tokenforget import cpu

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    ids = torch.randint(0, model.config.vocab_size, (3, 9))
    with torch.inference_mode():
        plain = model(ids).logits
    if broken == "missing":
        monkeypatch.setattr(cpu, "ONEDNN_OPS", ("mkldnn", "_reorder_linear_weight", "_no_such_op"))
    else:  # ops that run but no longer compute x W^T + b
        wrong = (lambda w: w, lambda x, w, b: torch.nn.functional.linear(x, w, b) + 1e-2)
        monkeypatch.setattr(cpu, "_private_ops", lambda: wrong)
    cpu.onednn_ops.cache_clear()
    try:
        assert cpu.onednn_ops() is None
        with models.eval_mode(model), models.packed_linears(model) as count, torch.profiler.profile() as prof:
            assert count == 0 and not any("forward" in vars(m) for m in model.modules())
            assert torch.equal(model(ids).logits, plain)
        assert "mkldnn::_linear_pointwise" not in {event.key for event in prof.key_averages()}
    finally:
        monkeypatch.undo()
        cpu.onednn_ops.cache_clear()
    assert cpu.onednn_ops() is not None  # the real ops pass their check on this CPU


def test_frozen_packed_linear_gives_the_plain_input_gradient():
    layer = torch.nn.Linear(6, 5).requires_grad_(False)
    x = torch.randn(2, 3, 6, requires_grad=True)
    grad_out = torch.randn(2, 3, 5)
    plain = layer(x)
    (expected,) = torch.autograd.grad(plain, x, grad_out)
    with models.packed_linears(layer, training=True) as count:
        assert count == 1
        packed = layer(x)
        assert type(packed.grad_fn).__name__ == "_FrozenPackedLinearBackward"
        (got,) = torch.autograd.grad(packed, x, grad_out)
    torch.testing.assert_close(packed, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)  # = grad_out @ W
    torch.testing.assert_close(got, grad_out @ layer.weight, rtol=1e-5, atol=1e-6)
    assert "forward" not in vars(layer)
    with models.packed_linears(layer, training=True):
        layer.requires_grad_(True)  # unfrozen inside: the plain path, which gives the weight its gradient
        layer(x).sum().backward()
    assert layer.weight.grad is not None


@pytest.mark.skipif(not models.cpu_supports_bf16(), reason="this CPU has no native bf16 instructions")
def test_packed_linear_under_bf16_autocast_matches_autocast():
    layer = torch.nn.Linear(64, 48)
    x = torch.randn(3, 5, 64)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = layer(x)
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)
    with models.eval_mode(layer, dtype=torch.bfloat16), bf16, torch.profiler.profile() as prof:
        packed = layer(x)
    assert packed.dtype == plain.dtype == torch.bfloat16
    torch.testing.assert_close(packed, plain, rtol=2e-2, atol=2e-2)
    assert "mkldnn::_linear_pointwise" in {event.key for event in prof.key_averages()}
    # training under bf16 autocast keeps the plain path (packed copies measured no faster there)
    layer.requires_grad_(False)
    x.requires_grad_(True)
    with models.packed_linears(layer, training=True, dtype=None), torch.autocast("cpu", dtype=torch.bfloat16):
        assert type(layer(x).grad_fn).__name__ != "_FrozenPackedLinearBackward"


def test_training_packs_only_frozen_layers_and_keeps_the_lora_gradients(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    model = models.wrap_lora(model, LoraSettings(r=4, alpha=8))
    for name, param in model.named_parameters():
        if "lora_B" in name:  # zero at init: the gradient would not reach lora_A and the layers below
            torch.nn.init.normal_(param, std=0.1)
    ids = torch.randint(0, model.config.vocab_size, (3, 9))

    def lora_grads() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model(ids).logits.logsumexp(-1).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain = lora_grads()
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    frozen = [m for m in linears if not m.weight.requires_grad]
    assert frozen and len(frozen) < len(linears)  # the base layers and the head; lora_A/B train
    with models.packed_linears(model, training=True) as count, torch.profiler.profile() as prof:
        assert count == len(frozen)
        assert all(("forward" in vars(m)) == (m in frozen) for m in linears)
        packed = lora_grads()
        with models.eval_mode(model):  # a probe inside training packs the rest, then unpacks only those
            assert all("forward" in vars(m) for m in linears)
        assert all(("forward" in vars(m)) == (m in frozen) for m in linears)
    assert not any("forward" in vars(m) for m in linears)
    assert plain.keys() == packed.keys() and plain
    for name in plain:
        torch.testing.assert_close(packed[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)
    ran = {event.key for event in prof.key_averages()}
    assert "mkldnn::_linear_pointwise" in ran


def test_saved_tokenizer_config_does_not_depend_on_how_the_tokenizer_was_loaded(tmp_path, smollm_dir):
    from transformers import AutoTokenizer

    online = AutoTokenizer.from_pretrained(smollm_dir)
    offline = AutoTokenizer.from_pretrained(smollm_dir, local_files_only=True)
    models.save_tokenizer(online, tmp_path / "a")
    models.save_tokenizer(offline, tmp_path / "b")
    config = (tmp_path / "b" / "tokenizer_config.json").read_text()
    assert "local_files_only" not in config
    assert config == (tmp_path / "a" / "tokenizer_config.json").read_text()
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "b")
    text = "Where was Basil Mahfouz Al-Kuwaiti born?"
    assert reloaded(text)["input_ids"] == online(text)["input_ids"]
    assert reloaded.eos_token == online.eos_token and reloaded.chat_template == online.chat_template
