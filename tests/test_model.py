"""The Mamba block and backbone: initialisation, the three inference modes agreeing, save/load and model
directories (registry, metadata, model card, from_pretrained)."""
import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from ssm_core import (Mamba, MambaConfig, MambaLMHeadModel, MambaSequenceClassifier, from_pretrained, load_model,
                      load_weights, save_model)
from ssm_core.models import (ModelFileError, ModelInfo, WrongModelError, read_model_info, update_model_info)


def lm(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(d_model=16, n_layer=2, vocab_size=11, d_state=4)
    cfg.update(kw)
    return MambaLMHeadModel(MambaConfig(**cfg)).double()


def test_reference_initialisation():
    block = Mamba(d_model=64, d_state=16)
    br = block.fwd
    assert block.d_inner == 128 and block.dt_rank == 4                      # ceil(64 / 16)
    torch.testing.assert_close(-torch.exp(br.A_log), -torch.arange(1, 17.).repeat(128, 1))
    assert torch.all(br.D == 1)
    dt = F.softplus(br.dt_proj.bias)                                          # stored as inverse softplus
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6 and dt.min() < 0.005
    assert br.dt_proj.weight.abs().max() <= 4 ** -0.5
    assert br.A_log._no_weight_decay and br.D._no_weight_decay
    m = MambaLMHeadModel(MambaConfig(d_model=32, n_layer=9, vocab_size=5))
    assert m.backbone.embedding.num_embeddings == 8                          # padded to a multiple of 8
    assert m.lm_head.weight is m.backbone.embedding.weight                   # tied
    # out_proj scaled by 1/sqrt(n_layer): kaiming-uniform bound 1/sqrt(fan_in), then / 3
    bound = 1 / math.sqrt(64) / 3
    w = m.backbone.layers[0].mixer.out_proj.weight
    assert w.abs().max() <= bound + 1e-7 and w.abs().max() > 0.8 * bound


def test_step_mode_equals_full_forward():
    m = lm()
    x = torch.randint(0, 11, (3, 29))
    full = m(x)
    states = m.allocate_states(3)
    steps = torch.stack([m.step(x[:, t], states) for t in range(29)], dim=1)
    torch.testing.assert_close(steps, full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("chunk", [1, 3, 8, 40])
def test_chunked_mode_equals_full_forward(chunk):
    m = lm(seed=1)
    x = torch.randint(0, 11, (2, 33))
    full = m(x)
    states, outs = m.allocate_states(2), []
    for start in range(0, 33, chunk):
        out, states = m(x[:, start:start + chunk], states)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("pooling,standardize", [("last", False), ("mean", False), ("mean", True)])
def test_classifier_chunked_equals_full(pooling, standardize):
    torch.manual_seed(2)
    m = MambaSequenceClassifier(MambaConfig(d_model=16, n_layer=2, vocab_size=9, num_classes=5, pooling=pooling,
                                            standardize_pooled=standardize)).double()
    if standardize:  # statistics from a few training batches, so that the standardiser is not the identity
        with torch.no_grad():
            for _ in range(3):
                m(torch.randint(0, 9, (4, 50)))
    m.eval()
    x = torch.randint(0, 9, (2, 101))
    torch.testing.assert_close(m.forward_chunked(x, chunk_size=16), m(x), rtol=1e-10, atol=1e-10)
    # padding on the right with a mask gives the logits of the unpadded sequence
    padded = torch.cat([x[:1, :60], torch.zeros(1, 41, dtype=torch.long)], 1)
    mask = torch.arange(101)[None] < 60
    torch.testing.assert_close(m(padded, mask), m(x[:1, :60]), rtol=1e-10, atol=1e-10)


def test_running_standardize_uses_running_statistics_never_the_batch_alone():
    from ssm_core.models.backbone import RunningStandardize

    torch.manual_seed(0)
    norm = RunningStandardize(3, momentum=0.1).double()
    first = torch.randn(64, 3, dtype=torch.float64) * torch.tensor([1e-2, 1.0, 50.0]) + torch.tensor([5.0, 0, -2])
    out = norm(first)  # the first batch sets the statistics: its output is standardised exactly
    torch.testing.assert_close(out.mean(0), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-9)
    # even a feature that varies by 1e-2 only (a mean over a long window) comes out with unit variance
    torch.testing.assert_close(out.std(0, unbiased=False), torch.ones(3, dtype=torch.float64), rtol=1e-4, atol=0)
    # later batches: a cumulative average over the first 1 / momentum batches (here: the mean of two batches)
    second = torch.randn(64, 3, dtype=torch.float64) + 7
    norm(second)
    torch.testing.assert_close(norm.mean, (first.mean(0) + second.mean(0)) / 2, rtol=1e-12, atol=1e-12)
    # a micro-batch of one window trains without a degenerate variance, and evaluation uses the stored statistics
    single = norm(torch.ones(1, 3, dtype=torch.float64))
    assert torch.isfinite(single).all() and float(norm.var.min()) > 0
    norm.eval()
    x = torch.randn(5, 3, dtype=torch.float64)
    stored = (norm.mean.clone(), norm.var.clone())
    torch.testing.assert_close(norm(x)[2:3], norm(x[2:3]), rtol=0, atol=0)
    assert torch.equal(norm.mean, stored[0]) and torch.equal(norm.var, stored[1])
    torch.testing.assert_close(norm(x), (x - stored[0]) / torch.sqrt(stored[1] + norm.eps), rtol=1e-12, atol=0)


def test_generate_uses_step_mode_consistently():
    m = lm(seed=3).float()
    prompt = torch.randint(0, 11, (2, 5))
    out = m.generate(prompt, n_new=7, temperature=0)          # greedy
    assert out.shape == (2, 12) and torch.equal(out[:, :5], prompt) and out.max() < 11
    # greedy generation must agree with argmax of the full forward at every generated position
    logits = m(out)[:, :, :11]
    torch.testing.assert_close(out[:, 5:], logits[:, 4:-1].argmax(-1))


def test_non_selective_ablation_and_bidirectional():
    m = lm(selective=False)
    x = torch.randint(0, 11, (2, 20))
    states = m.allocate_states(2)
    steps = torch.stack([m.step(x[:, t], states) for t in range(20)], dim=1)
    torch.testing.assert_close(steps, m(x), rtol=1e-10, atol=1e-10)
    assert not any("x_proj" in n for n, _ in m.named_parameters())
    bi = lm(bidirectional=True)
    y = bi(x)
    # bidirectional: the output at position 0 depends on the future
    x2 = x.clone()
    x2[:, -1] = (x2[:, -1] + 1) % 11
    assert (bi(x2)[:, 0] - y[:, 0]).abs().max() > 1e-8
    assert (m(x2)[:, 0] - m(x)[:, 0]).abs().max() == 0          # the causal model does not
    with pytest.raises(ValueError, match="bidirectional"):
        bi.step(x[:, 0], bi.allocate_states(2))


def test_gradient_checkpointing_same_gradients():
    m = lm(seed=4)
    x = torch.randint(0, 11, (2, 16))
    m(x).pow(2).mean().backward()
    g1 = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.backbone.gradient_checkpointing = True
    m(x).pow(2).mean().backward()
    for a, p in zip(g1, m.parameters()):
        torch.testing.assert_close(p.grad, a)


def test_save_load_round_trip_and_mismatch(tmp_path):
    m = lm(seed=5).float()
    save_model(m, tmp_path / "run")
    assert (tmp_path / "run" / "model.safetensors").is_file() and (tmp_path / "run" / "model.json").is_file()
    loaded = load_model(tmp_path / "run")
    x = torch.randint(0, 11, (2, 9))
    torch.testing.assert_close(loaded(x), m(x))
    assert loaded.lm_head.weight is loaded.backbone.embedding.weight
    other = MambaLMHeadModel(MambaConfig(d_model=16, n_layer=3, vocab_size=11, d_state=4))
    with pytest.raises(ValueError, match="n_layer: checkpoint has 2, model has 3"):
        load_weights(other, tmp_path / "run")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_model(tmp_path / "empty")
    (tmp_path / "empty" / "model.json").write_text('{"d_model": 16}')  # some other tool's config
    with pytest.raises(ValueError, match="not a model config written by save_model"):
        load_model(tmp_path / "empty")


def test_a_standardising_classifier_saves_and_loads_its_statistics(tmp_path):
    torch.manual_seed(4)
    m = MambaSequenceClassifier(MambaConfig(d_model=16, n_layer=1, vocab_size=9, num_classes=3, pooling="mean",
                                            standardize_pooled=True))
    with torch.no_grad():
        m(torch.randint(0, 9, (6, 40)))  # training mode: the statistics move away from (0, 1)
    save_model(m.eval(), tmp_path / "run")
    loaded = load_model(tmp_path / "run").eval()
    assert loaded.config.standardize_pooled and int(loaded.standardize.batches) == 1
    x = torch.randint(0, 9, (2, 40))
    torch.testing.assert_close(loaded(x), m(x), rtol=0, atol=0)


def test_config_validation():
    with pytest.raises(ValueError, match="d_model"):
        MambaConfig(d_model=0)
    with pytest.raises(ValueError, match="pooling"):
        MambaConfig(pooling="max")


@pytest.mark.parametrize("d_conv", [1, 4])
def test_cpu_inference_path_matches_float64_model(d_conv, monkeypatch):
    """Without autograd a float32 model on CPU runs the fused time-major numba kernels; full and chunked forwards
    must give the float64 model's logits to float32 accuracy."""
    from ssm_core.ops import scan_cpu

    calls = []
    fused = scan_cpu.selective_scan_time_major
    monkeypatch.setattr(scan_cpu, "selective_scan_time_major", lambda *a, **k: calls.append(1) or fused(*a, **k))
    torch.manual_seed(d_conv)
    cfg = MambaConfig(d_model=32, n_layer=3, vocab_size=9, d_state=8, d_conv=d_conv, num_classes=4)
    m32 = MambaSequenceClassifier(cfg).eval()
    m64 = MambaSequenceClassifier(cfg).double().eval()
    m64.load_state_dict(m32.state_dict())
    x = torch.randint(0, 9, (2, 203))
    with torch.no_grad():
        ref = m64(x)
        full = m32(x)
        assert len(calls) == cfg.n_layer
        chunked = m32.forward_chunked(x, chunk_size=2)         # chunks shorter than the conv's context
        chunked_long = m32.forward_chunked(x, chunk_size=64)
    for got in (full, chunked, chunked_long):
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    # with autograd the same model goes through selective_scan (and can be trained)
    calls.clear()
    torch.testing.assert_close(m32(x).double(), ref, rtol=1e-5, atol=1e-5)
    assert not calls


def test_cpu_inference_path_under_bf16_autocast(monkeypatch):
    """torch.autocast(bf16) runs the projections in bfloat16 and keeps the fused float32 kernels: the logits stay
    within bfloat16 accuracy of the float64 model."""
    from ssm_core.ops import scan_cpu

    calls = []
    fused = scan_cpu.selective_scan_time_major
    monkeypatch.setattr(scan_cpu, "selective_scan_time_major", lambda *a, **k: calls.append(1) or fused(*a, **k))
    torch.manual_seed(7)
    cfg = MambaConfig(d_model=32, n_layer=3, vocab_size=9, d_state=8, num_classes=4)
    m32 = MambaSequenceClassifier(cfg).eval()
    m64 = MambaSequenceClassifier(cfg).double().eval()
    m64.load_state_dict(m32.state_dict())
    x = torch.randint(0, 9, (2, 150))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = m32.forward_chunked(x, chunk_size=64)
    assert len(calls) == 3 * cfg.n_layer
    with torch.no_grad():
        ref = m64(x)
    assert (got.double() - ref).abs().max() < 3e-2 * ref.abs().max()
    assert (got.double() - ref).abs().max() > 1e-6  # bf16 did take effect


# --- model directories: registry, metadata, model card, from_pretrained ---------------------------------------


def test_model_json_cannot_make_the_loader_import_anything(tmp_path, monkeypatch):
    """model_class is looked up in the registry: "this.X" (whose import prints the Zen of Python) and a module in
    the working directory are refused, naming the file, the field and the value, without being imported."""
    import sys

    from ssm_core.models import UnknownModelError
    from ssm_core.train import load_trained_model
    from ssm_core.train.checkpoint import save_checkpoint

    marker = tmp_path / "imported"
    (tmp_path / "planted.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Model: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    save_model(lm().float(), tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    for name in ("this.X", "planted.Model", "os.system"):
        (tmp_path / "run" / "model.json").write_text(json.dumps({**meta, "model_class": name}))
        with pytest.raises(UnknownModelError) as err:
            load_model(tmp_path / "run")
        message = str(err.value)
        assert str(tmp_path / "run" / "model.json") in message and "model_class" in message and repr(name) in message
        save_checkpoint(tmp_path / "step-00000001.ckpt", {"model_class": name, "model_config": {}, "model": {}})
        with pytest.raises(UnknownModelError, match="step-00000001.ckpt"):
            load_trained_model(tmp_path / "step-00000001.ckpt")
    assert not marker.exists() and "planted" not in sys.modules and "this" not in sys.modules


def test_directories_saved_before_the_registry_still_load(tmp_path):
    m = lm(seed=2).float()
    save_model(m, tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "model.json").read_text())
    old = {"model_class": "ssm_core.models.backbone.MambaLMHeadModel", "config": meta["config"]}  # the old format
    (tmp_path / "old" / "model.json").write_text(json.dumps(old))
    loaded = load_model(tmp_path / "old")
    x = torch.randint(0, 11, (2, 9))
    torch.testing.assert_close(loaded(x), m(x), rtol=0, atol=0)
    assert loaded.model_info == ModelInfo()


def test_save_pretrained_writes_a_self_contained_directory_with_a_model_card(tmp_path):
    import yaml

    torch.manual_seed(3)
    clf = MambaSequenceClassifier(MambaConfig(d_model=16, n_layer=1, vocab_size=9, num_classes=3, pooling="mean"))
    info = ModelInfo(task="dna-species-classification", labels=["human", "chimpanzee", "gorilla"], window=256,
                     tokenizer={"iupac": "n"}, preset="tiny", trained_on="data/apes", steps=40,
                     metrics={"test_accuracy": 0.75}, usage="python -m genomics classify --checkpoint clf --fasta x.fa")
    clf.save_pretrained(tmp_path / "clf", info)
    meta = json.loads((tmp_path / "clf" / "model.json").read_text())
    assert meta["model_class"] == "ssm_core.MambaSequenceClassifier"
    assert meta["metadata"]["id2label"] == {"0": "human", "1": "chimpanzee", "2": "gorilla"}
    assert meta["metadata"]["label2id"] == {"human": 0, "chimpanzee": 1, "gorilla": 2}
    card = (tmp_path / "clf" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "mamba-seq-suite" and "mamba" in front["tags"]
    assert front["model-index"][0]["results"][0]["metrics"] == [
        {"type": "test_accuracy", "name": "test_accuracy", "value": 0.75}]
    for fact in ("data/apes", "training steps: 40", "from_pretrained", info.usage):
        assert fact in card
    # the weights and model.json alone, copied elsewhere, are the whole model
    copy = tmp_path / "elsewhere" / "clf"
    copy.mkdir(parents=True)
    for name in ("model.safetensors", "model.json"):
        (copy / name).write_bytes((tmp_path / "clf" / name).read_bytes())
    loaded = MambaSequenceClassifier.from_pretrained(copy)
    assert loaded.model_info == info
    x = torch.randint(0, 9, (2, 30))
    torch.testing.assert_close(loaded.eval()(x), clf.eval()(x), rtol=0, atol=0)
    loaded.save_pretrained(tmp_path / "again")  # the loaded metadata goes along
    assert read_model_info(tmp_path / "again") == info
    update_model_info(tmp_path / "again", steps=50, metrics={"test_nll": 0.5})
    assert read_model_info(tmp_path / "again").metrics == {"test_accuracy": 0.75, "test_nll": 0.5}
    assert "training steps: 50" in (tmp_path / "again" / "README.md").read_text()
    with pytest.raises(WrongModelError, match="a Mamba sequence classifier"):
        MambaLMHeadModel.from_pretrained(copy)
    (copy / "model.json").write_text(json.dumps({**meta, "metadata": {"id2label": {"0": "a", "2": "b"}}}))
    with pytest.raises(ModelFileError, match="id2label"):
        from_pretrained(copy)


def test_half_precision_weights_checksum_in_the_card_and_shipped_models_by_name(tmp_path, monkeypatch):
    from safetensors import safe_open

    from ssm_core.models import ModelFileMissingError
    from ssm_core.models import io as model_io

    torch.manual_seed(4)
    model = MambaLMHeadModel(MambaConfig(d_model=16, n_layer=1, vocab_size=9))
    shipped = tmp_path / "pretrained"
    model.save_pretrained(shipped / "dna-test", ModelInfo(trained_on="a few bases"), dtype=torch.bfloat16)
    weights = shipped / "dna-test" / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert next(model.parameters()).dtype == torch.float32  # the model itself is left as it was
    assert model_io.card_sha256(shipped / "dna-test") == model_io.file_sha256(weights)
    monkeypatch.setattr(model_io, "SHIPPED_DIR", shipped)
    monkeypatch.chdir(tmp_path)
    assert list(model_io.shipped_models()) == ["dna-test"]
    loaded = from_pretrained("dna-test")  # by name: the shipped directory, weights cast back to float32
    assert loaded.model_info.trained_on == "a few bases" and next(loaded.parameters()).dtype == torch.float32
    x = torch.randint(0, 9, (1, 20))
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x), rtol=0.05, atol=0.05)
    with pytest.raises(ModelFileMissingError, match="dna-nonesuch"):
        from_pretrained("dna-nonesuch")


def test_saving_never_overwrites_a_readme_of_the_users(tmp_path):
    from ssm_core.models.errors import ModelCardExistsError

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("# my notes\n")
    with pytest.raises(ModelCardExistsError, match="README.md"):
        save_model(lm().float(), mine)
    assert (mine / "README.md").read_text() == "# my notes\n" and sorted(p.name for p in mine.iterdir()) == [
        "README.md"]
    save_model(lm().float(), tmp_path / "ours")
    save_model(lm(seed=1).float(), tmp_path / "ours")  # our own card is rewritten with the model


def test_a_half_copied_model_directory_is_refused_and_an_unfinished_run_says_which_checkpoint_it_loads(
        tmp_path, capsys):
    from ssm_core.train import CheckpointError, load_trained_model
    from ssm_core.train.checkpoint import save_checkpoint

    m = lm(seed=6).float()
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    save_checkpoint(run / "checkpoints" / "step-00000004.ckpt", {
        "model_class": "ssm_core.models.backbone.MambaLMHeadModel", "model_config": dataclasses.asdict(m.config),
        "model": m.state_dict()})
    loaded = load_trained_model(run)
    torch.testing.assert_close(loaded.lm_head.weight, m.lm_head.weight)
    notice = capsys.readouterr().err
    assert notice.startswith("notice: ") and "step-00000004.ckpt" in notice and "model.safetensors" in notice
    save_model(m, tmp_path / "model")
    (run / "model.json").write_bytes((tmp_path / "model" / "model.json").read_bytes())  # weights not copied
    with pytest.raises(CheckpointError, match="has model.json but no model.safetensors.*step-00000004.ckpt"):
        load_trained_model(run)
