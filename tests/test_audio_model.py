"""The SaShiMi-Mamba waveform model: pooling, causality, recurrent mode against the parallel forward, presets,
save/load, and generation agreeing with the parallel model."""
import pytest
import torch

from ssm_core import load_model, save_model

from audio.generate import generate
from audio.sashimi import (DownPool, SashimiConfig, SashimiModel, UpPool, next_sample_nll, parameter_count,
                           shift_right)


def small_model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(d_model=8, n_blocks=1, d_state=4, pools=(2, 3), bits=5)
    cfg.update(kw)
    return SashimiModel(SashimiConfig(**cfg)).double().eval()


def test_pooling_shapes_and_layout():
    x = torch.randn(2, 12, 5, dtype=torch.float64)
    down = DownPool(5, pool=4, expand=2).double()
    y = down(x)
    assert y.shape == (2, 3, 10)
    # coarse step k is the projection of fine steps 4k..4k+3 concatenated in time order
    torch.testing.assert_close(y[:, 1], down.linear(x[:, 4:8].reshape(2, 20)))
    up = UpPool(5, pool=4, expand=2).double()
    z = up(y)
    assert z.shape == (2, 12, 5)
    assert torch.all(z[:, :4] == 0)                                 # the causal shift: zeros first
    torch.testing.assert_close(z[:, 4:8], up.linear(y[:, 0]).view(2, 4, 5))  # fine 4..7 <- coarse 0
    torch.testing.assert_close(z[:, 8:12], up.unfold_step(y[:, 1]))


def test_widths_stride_and_groups():
    c = SashimiConfig.from_preset("6.1m")
    assert c.widths == [64, 128, 256] and c.stride == 16 and c.n_groups == 5
    m = SashimiModel(SashimiConfig(d_model=4, n_blocks=2, d_state=2, pools=(4, 4)))
    assert [len(g.blocks) for g in (*m.down_groups, m.centre, *m.up_groups)] == [2, 2, 2, 2, 2]
    x = torch.randint(0, 256, (3, 32))
    logits = m(x)
    assert logits.shape == (3, 32, 256)
    # the values: the U-Net unrolled by hand from its parts (down, pool, centre, unpool + skip, up, head)
    with torch.no_grad():
        skip0 = m.down_groups[0](m.embedding(x))
        skip1 = m.down_groups[1](m.down_pools[0](skip0))
        coarse = m.down_pools[1](skip1)
        centre = m.centre(coarse) + coarse
        u1 = m.up_pools[1](centre) + skip1
        u0 = m.up_pools[0](m.up_groups[1](u1) + u1) + skip0
        reference = m.head(m.norm_f(m.up_groups[0](u0) + u0))
        torch.testing.assert_close(m(x), reference, rtol=0, atol=0)
    with pytest.raises(ValueError, match="multiple of the total pooling factor 16"):
        m(torch.randint(0, 256, (1, 40)))


@pytest.mark.parametrize("down_blocks", [True, False])
def test_causality_exact(down_blocks):
    """Changing input sample t changes no output before t (output t predicts sample t + 1)."""
    m = small_model(seed=1, down_blocks=down_blocks)
    x = torch.randint(0, 32, (2, 36))
    base = m(x)
    for t in (0, 5, 6, 17, 35):
        x2 = x.clone()
        x2[:, t] = (x2[:, t] + 7) % 32
        changed = m(x2)
        assert torch.equal(changed[:, :t], base[:, :t]), f"input {t} leaked into earlier outputs"
        assert (changed[:, t] - base[:, t]).abs().max() > 0        # and it does reach output t
    # with the start code in front, changing sample t never moves the predictions of samples 0..t
    nll = next_sample_nll(m, x, m.config.start_code)
    x2 = x.clone()
    x2[:, 20] = (x2[:, 20] + 3) % 32
    nll2 = next_sample_nll(m, x2, m.config.start_code)
    assert torch.equal(nll[:, :20], nll2[:, :20]) and not torch.equal(nll[:, 21:], nll2[:, 21:])


@pytest.mark.parametrize("pools", [(2, 3), (4, 4), (3,)])
def test_recurrent_mode_equals_parallel(pools):
    m = small_model(seed=2, pools=pools)
    length = 2 * m.config.stride + m.config.stride  # three centre steps
    x = torch.randint(0, 32, (3, length))
    full = m(x)
    state = m.allocate_state(3)
    steps = torch.stack([m.step(x[:, t], state) for t in range(length)], dim=1)
    assert state.t == length
    # the residual blocks round the mixer output through float32 (ResidualBlock), identically in both modes
    torch.testing.assert_close(steps, full, rtol=1e-9, atol=1e-9)


def test_generation_matches_parallel_forward():
    """Greedy samples are the argmax of what the parallel forward predicts for the generated sequence, and the
    recorded NLL is the parallel model's NLL of those samples."""
    m = small_model(seed=3)
    out = generate(m, n=3, length=30, batch_size=2, temperature=0.0, progress=False)
    codes = out.codes
    logits = m(shift_right(codes, m.config.start_code))
    assert torch.equal(logits.argmax(-1), codes)
    nll_bits = next_sample_nll(m, codes, m.config.start_code).mean(1) / torch.log(torch.tensor(2.0, dtype=torch.float64))
    torch.testing.assert_close(out.nll_bits, nll_bits, rtol=1e-9, atol=1e-9)
    # sampling: same seed, same clips; prompts are kept and continued
    a = generate(m, n=2, length=18, seed=5, progress=False).codes
    b = generate(m, n=2, length=18, seed=5, progress=False).codes
    assert torch.equal(a, b)
    prompts = torch.randint(0, 32, (2, 7))
    c = generate(m, n=4, length=18, prompts=prompts, seed=1, progress=False)
    assert torch.equal(c.codes[:, :7], prompts[torch.tensor([0, 1, 0, 1])])
    with pytest.raises(ValueError, match="must be shorter"):
        generate(m, n=1, length=7, prompts=prompts, progress=False)


def test_top_p_keeps_samples_in_the_nucleus():
    m = small_model(seed=4)
    out = generate(m, n=4, length=24, top_p=0.3, seed=0, progress=False).codes
    probs = torch.softmax(m(shift_right(out, m.config.start_code)), -1)
    sorted_p, _ = probs.sort(-1, descending=True)
    chosen = probs.gather(-1, out[..., None])[..., 0]
    # a token is in the nucleus when the mass strictly above it is below top_p
    above = (probs * (probs > chosen[..., None])).sum(-1)
    assert torch.all(above < 0.3 + 1e-12)


def test_activation_checkpointing_same_gradients():
    """The engine's --set train.activation_checkpointing=true finds the groups' switches; gradients unchanged."""
    from ssm_core.train.engine import enable_activation_checkpointing

    x = torch.randint(0, 32, (2, 24))
    grads = []
    for checkpointing in (False, True):
        m = small_model(seed=6).train()
        if checkpointing:
            assert enable_activation_checkpointing(m) == 5
        next_sample_nll(m, x, m.config.start_code).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)


def test_preset_parameter_counts():
    """The paper's SC09 models are 6.1M and 24.3M parameters; our reading of the architecture gives these."""
    counts = {name: parameter_count(SashimiConfig.from_preset(name)) for name in ("6.1m", "24.3m")}
    print(f"\nSaShiMi-Mamba parameters: 6.1m preset {counts['6.1m']:,}, 24.3m preset {counts['24.3m']:,}")
    assert abs(counts["6.1m"] / 6.1e6 - 1) < 0.04
    assert abs(counts["24.3m"] / 24.3e6 - 1) < 0.04
    assert parameter_count(SashimiConfig.from_preset("tiny")) < 200_000


def test_save_load_round_trip(tmp_path):
    m = small_model(seed=5).float()
    save_model(m, tmp_path / "run")
    loaded = load_model(tmp_path / "run")
    assert isinstance(loaded, SashimiModel) and loaded.config == m.config
    assert isinstance(loaded.config.pools, tuple)
    x = torch.randint(0, 32, (2, 12))
    torch.testing.assert_close(loaded(x), m(x), rtol=0, atol=0)


def test_config_validation():
    with pytest.raises(ValueError, match="pools"):
        SashimiConfig(pools=(4, 1))
    with pytest.raises(ValueError, match="quantization"):
        SashimiConfig(quantization="alaw")
    with pytest.raises(ValueError, match="unknown SaShiMi preset"):
        SashimiConfig.from_preset("huge")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_generation_equals_plain_steps():
    torch.manual_seed(0)
    m = SashimiModel(SashimiConfig(d_model=16, n_blocks=2, d_state=8)).cuda().eval()
    graphed = generate(m, n=4, length=100, temperature=0.0, cuda_graph=True, progress=False)
    plain = generate(m, n=4, length=100, temperature=0.0, cuda_graph=False, progress=False)
    assert torch.equal(graphed.codes, plain.codes)
    torch.testing.assert_close(graphed.nll_bits, plain.nll_bits, rtol=1e-5, atol=1e-5)
    # sampling inside the graphs: reproducible from the seed, and a prompt is kept
    prompts = torch.randint(0, 256, (4, 20))
    a = generate(m, n=4, length=100, seed=3, prompts=prompts, progress=False)
    b = generate(m, n=4, length=100, seed=3, prompts=prompts, progress=False)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.codes[:, :20], prompts)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_steps_under_cuda_graphs_match_the_parallel_forward():
    torch.manual_seed(0)
    m = SashimiModel(SashimiConfig(d_model=16, n_blocks=2, d_state=8)).cuda().eval()
    m.compile_step()
    prompts = torch.randint(0, 256, (3, 64))
    out = generate(m, n=3, length=65, prompts=prompts, temperature=0.0, progress=False)  # reads the prompt
    assert torch.equal(out.codes[:, :64], prompts)
    # the one generated sample is the parallel model's greedy choice after the prompt (zeros pad to 80 samples;
    # causality keeps them out of position 64)
    codes = torch.cat([out.codes, torch.zeros(3, 15, dtype=torch.long)], 1).cuda()
    with torch.no_grad():
        logits = m(shift_right(codes, m.config.start_code))
    assert torch.equal(logits[:, 64].argmax(-1).cpu(), out.codes[:, 64])


@pytest.mark.timeout(60)
def test_generation_that_cannot_fit_in_memory_is_refused_before_it_starts(monkeypatch):
    from audio.generate import generate
    from ssm_core.utils import memory

    monkeypatch.setattr(memory, "available_memory", lambda device: 2_000_000)  # 2 MB
    model = SashimiModel(SashimiConfig(d_model=4, n_blocks=2, d_state=2, pools=(4, 4))).eval()
    with pytest.raises(memory.InsufficientMemoryError, match=r"4 clips of 100,000 samples need 3\.2 MB for their "
                                                             r"codes, but 2\.0 MB is available on cpu"):
        generate(model, 4, 100_000, progress=False)
