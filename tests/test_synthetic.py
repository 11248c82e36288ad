"""Synthetic tasks: the generators build what the paper describes, and CPU-sized Mamba models learn both tasks
through the engine (well above chance) while the non-selective ablation fails at selective copying."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ssm_core.models import read_model_info
from ssm_core.synthetic import SyntheticDataset, induction_heads_example, selective_copying_example
from ssm_core.synthetic.runner import SyntheticExperiment, SyntheticTask, main


@pytest.mark.parametrize("seqlen,vocab", [(4, 3), (64, 16), (1000, 5)])
def test_induction_heads_sequences(seqlen, vocab):
    rng = np.random.default_rng(0)
    for _ in range(200):
        tokens, answer = induction_heads_example(rng, seqlen, vocab)
        trigger = vocab - 1
        assert tokens.shape == (seqlen,) and tokens.dtype == np.int64
        where = np.flatnonzero(tokens == trigger)
        assert len(where) == 2 and where[1] == seqlen - 1  # once inside, once at the end
        assert where[0] + 1 < seqlen - 1 and tokens[where[0] + 1] == answer != trigger
        assert tokens.min() >= 0 and tokens.max() <= trigger


def test_induction_answers_and_positions_are_uniform():
    rng = np.random.default_rng(1)
    n, vocab, seqlen = 6000, 6, 10
    answers, positions = np.zeros(vocab, int), np.zeros(seqlen, int)
    for _ in range(n):
        tokens, answer = induction_heads_example(rng, seqlen, vocab)
        answers[answer] += 1
        positions[np.flatnonzero(tokens == vocab - 1)[0]] += 1
    assert answers[-1] == 0 and np.all(np.abs(answers[:-1] / n - 1 / 5) < 0.03)
    assert np.all(positions[seqlen - 2:] == 0) and np.all(np.abs(positions[:seqlen - 2] / n - 1 / 8) < 0.03)


def test_far_trigger_training_puts_the_first_trigger_near_the_start_for_its_steps(tmp_path, capsys):
    rng = np.random.default_rng(3)
    firsts = {int(np.flatnonzero(induction_heads_example(rng, 64, 8, first_within=4)[0] == 7)[0]) for _ in range(300)}
    assert firsts == {0, 1, 2, 3}
    exp = SyntheticExperiment.from_preset("tiny", "induction")
    exp.data.far_trigger_steps, exp.data.far_trigger_span = 5, 3
    exp.train.steps, exp.train.batch_size = 10, 4
    data = SyntheticTask(exp).train_dataset()
    firsts = [int(np.flatnonzero(data[i]["input_ids"].numpy()[:-1] == 7)[0]) for i in range(40)]
    assert max(firsts[:20]) < 3 and max(firsts[20:]) >= 3  # steps 0-4 far, then anywhere in the 32 tokens
    assert all(int(data[i]["target"]) == int(data[i]["input_ids"][firsts[i] + 1]) for i in range(40))
    for flags, message in ((["--far-trigger-span", "0", "--far-trigger-steps", "5"], "far_trigger_span >= 1"),
                           (["--far-trigger-steps", "-1"], "far_trigger_steps must be >= 0")):
        with pytest.raises(SystemExit) as stop:
            main(["induction", "--preset", "tiny", "--out", str(tmp_path / "bad"), *flags])
        assert stop.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["copying", "--preset", "tiny", "--out", str(tmp_path / "bad"), "--far-trigger-steps", "5"])
    assert stop.value.code == 2 and "task 'copying' has none" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("seqlen,vocab,num_tokens", [(8, 3, 4), (64, 8, 4), (4096, 16, 16)])
def test_selective_copying_sequences(seqlen, vocab, num_tokens):
    rng = np.random.default_rng(2)
    for _ in range(50):
        tokens, data = selective_copying_example(rng, seqlen, vocab, num_tokens)
        assert tokens.shape == (seqlen,) and data.shape == (num_tokens,)
        assert np.all(tokens[seqlen - num_tokens:] == vocab - 1)  # the markers
        body = tokens[:seqlen - num_tokens]
        assert np.array_equal(body[body != 0], data)  # data tokens in order among the noise
        assert data.min() >= 1 and data.max() <= vocab - 2


def test_bad_generator_parameters_are_named():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="seqlen >= 2 \\* num_tokens; got vocab 8, num_tokens 16, seqlen 20"):
        selective_copying_example(rng, 20, 8, 16)
    with pytest.raises(ValueError, match="vocab >= 3"):
        SyntheticDataset("induction", 4, 16, 2, seed=0)


def test_dataset_items_depend_only_on_seed_and_index():
    a = SyntheticDataset("copying", 100, 32, 8, seed=5, num_tokens=4)
    b = SyntheticDataset("copying", 100, 32, 8, seed=5, num_tokens=4)
    assert torch.equal(a[7]["input_ids"], b[7]["input_ids"]) and torch.equal(a[7]["target"], b[7]["target"])
    assert not torch.equal(a[7]["input_ids"], a[8]["input_ids"])
    assert not torch.equal(a[7]["input_ids"], SyntheticDataset("copying", 100, 32, 8, seed=6, num_tokens=4)[7][
        "input_ids"])


@pytest.mark.parametrize("task", ["induction", "copying"])
def test_streamed_answer_logits_equal_the_full_forward(task):
    exp = SyntheticExperiment.from_preset("tiny", task)
    t = SyntheticTask(exp)
    torch.manual_seed(0)
    model = t.build_model().eval()
    ids = torch.stack([t.dataset(3, 100, seed=1)[i]["input_ids"] for i in range(3)])
    with torch.no_grad():
        full = t.answer_logits(model, ids)
        streamed = t.answer_logits(model, ids, chunk=16)
    torch.testing.assert_close(streamed, full, rtol=1e-4, atol=1e-4)


def test_a_length_curriculum_gives_each_step_its_stage_length(tmp_path, capsys):
    exp = SyntheticExperiment.from_preset("tiny", "copying")
    exp.data.curriculum_start, exp.train.steps, exp.train.batch_size = 8, 40, 4
    task = SyntheticTask(exp)
    assert task.schedule() == [(0, 8), (10, 16), (20, 32)]  # half the steps warm up, shared by the 2 short stages
    data = task.train_dataset()
    lengths = {i: data[i]["input_ids"].shape[0] for i in (0, 39, 40, 79, 80, 159)}  # items of steps 0, 9, 10, ...
    assert lengths == {0: 8, 39: 8, 40: 16, 79: 16, 80: 32, 159: 32}
    assert data[45]["target"].shape == (exp.data.num_tokens,)
    with pytest.raises(SystemExit) as stop:  # 32 is not 12 times a power of two
        main(["copying", "--preset", "tiny", "--out", str(tmp_path / "bad"), "--curriculum-start", "12"])
    assert stop.value.code == 2 and "--curriculum-start 12" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_state_passing_starts_each_sequence_where_another_example_left_off():
    exp = SyntheticExperiment.from_preset("tiny", "induction")
    exp.data.state_passing = True
    task = SyntheticTask(exp)
    torch.manual_seed(0)
    model = task.build_model().double()
    ids = torch.stack([task.dataset(3, 32, seed=1)[i]["input_ids"] for i in range(3)])
    states = task.passed_states(model, ids)
    with torch.no_grad():  # example 1 starts from the state example 0 left (the batch rolled by one)
        _, alone = model(ids[:1], model.allocate_states(1, dtype=torch.float64))
    for layer, reference in zip(states, alone):
        torch.testing.assert_close(layer.ssm[1:2], reference.ssm, rtol=1e-10, atol=1e-12)
        assert not layer.ssm.requires_grad
    passed = task.answer_logits(model, ids, states=states)
    fresh = task.answer_logits(model, ids)
    assert passed.shape == fresh.shape and not torch.allclose(passed, fresh)
    loss, _ = task.loss(model, {"input_ids": ids, "target": torch.zeros(3, dtype=torch.long)})
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def _run(tmp_path, *argv):
    results = main([*argv, "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert json.loads((tmp_path / "run" / "results.json").read_text())["accuracy"] == results["accuracy"]
    assert (tmp_path / "run" / "plots" / "accuracy_vs_length.png").is_file()
    assert (tmp_path / "run" / "model.safetensors").is_file()
    info = read_model_info(tmp_path / "run")  # the model card says what it learnt and how well
    assert info.task == f"synthetic-{results['task']}" and info.steps == results["steps"]
    assert info.metrics[f"accuracy_at_{results['train_len']}"] == results["accuracy"][str(results["train_len"])]
    return results


def test_tiny_induction_heads_learn_and_extrapolate(tmp_path):
    results = _run(tmp_path, "induction", "--preset", "tiny", "--eval-lens", "32,128")
    assert results["task"] == "induction" and results["train_len"] == 32 and set(results["accuracy"]) == {"32", "128"}
    # chance is 1/7; the tiny model reaches ~100% at its training length and 4x beyond it
    assert results["accuracy"]["32"] > 0.9 and results["accuracy"]["128"] > 0.7, results["accuracy"]


@pytest.mark.slow
def test_tiny_induction_heads_trained_far_first_extrapolate_64x(tmp_path):
    # Trained with the trigger anywhere, the same model reaches 100% at 16x but ~84% at 64x and ~55% at 256x (its
    # value fades in slow channels); trained with the value far from the query first, it holds Δ ~ 0 between value
    # and query and answers at any length (issue #23, benchmarks/NOTES_induction.md). ~1 min on 1 CPU thread.
    results = _run(tmp_path, "induction", "--preset", "tiny", "--far-trigger-steps", "1200", "--steps", "1500",
                   "--eval-lens", "32,2048")
    assert results["accuracy"]["32"] >= 0.97 and results["accuracy"]["2048"] >= 0.97, results["accuracy"]


@pytest.mark.slow
def test_tiny_selective_copying_learns_and_the_non_selective_ablation_does_not(tmp_path):
    results = _run(tmp_path / "s6", "copying", "--preset", "tiny", "--steps", "400")
    assert results["chance"] == pytest.approx(1 / 6)
    assert results["accuracy"]["32"] > 0.3, results["accuracy"]  # rises further with the preset's 600 steps
    ablation = _run(tmp_path / "lti", "copying", "--preset", "tiny", "--no-selection", "--steps", "150")
    assert not ablation["selective"]
    assert ablation["accuracy"]["32"] < 0.25, ablation["accuracy"]  # stays near chance


def test_bad_engine_flags_are_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["induction", "--out", str(tmp_path / "run"), "--preset", "tiny", "--lr", "-1"])
    assert stop.value.code == 2 and "argument --lr: must be > 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
