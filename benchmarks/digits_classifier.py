"""Train the digits classifier that ships with the suite, and measure it on voices it never heard.

    python benchmarks/digits_classifier.py                      # build the sets, train, test, write the results
    python benchmarks/digits_classifier.py --ship               # ... and write ssm_core/pretrained/digits-classifier

1. The built-in spoken-digits set (`audio make-digits`, default voices: every eSpeak NG voice but the held-out
   ones) with --per-class clips per digit, and a second set of only the held-out voices (`--voices held-out`,
   another seed): a dozen voice variants and one accent that never appear in the first set.
2. `audio train-classifier --preset small` on the first set's train split (validation on its validation split).
3. Accuracy on the first set's test split (same voices, unseen clips) and on the whole held-out-voices set.

On 2 CPU cores the sets take about 4 minutes and training 5 to 20 minutes, depending on the machine's load (one
thread: the convolutions are small, and a second thread only adds overhead on a shared machine). Results go to
benchmarks/results/digits_classifier_<device>.json and ..._training_log.csv (the run's metrics.csv); --ship
stores the classifier in fp16 (halves the size; the accuracies are measured again on the stored copy) with both
accuracies and the sets it was trained on in its model card. Sets already in --work are reused (then
synthesis_seconds is 0).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"
SHIP_TO = HERE.parent / "ssm_core" / "pretrained" / "digits-classifier"


def accuracies(model, digits: Path, held_out: Path) -> dict[str, float]:
    """Accuracy on the digits set's test split and on every clip of the held-out-voices set."""
    from audio.datasets import LabelledAudioSet
    from audio.metrics import class_accuracy, classify

    out = {}
    for key, root, split in (("test_accuracy", digits, "test"), ("held_out_voices_accuracy", held_out, "all")):
        dataset = LabelledAudioSet(root, split=split, output="waveform")
        out[key] = class_accuracy(model, dataset, classify(model, dataset, 64, "cpu", progress=False))
        out[key.replace("accuracy", "clips")] = len(dataset)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=HERE / ".cache" / "digits_classifier",
                        help="where the sets and the training run go (reused when present)")
    parser.add_argument("--per-class", type=int, default=500, help="clips per digit of the training set")
    parser.add_argument("--held-out-per-class", type=int, default=60, help="clips per digit of the held-out set")
    parser.add_argument("--epochs", type=float, help="passes over the train split (default: the small preset's)")
    parser.add_argument("--ship", action="store_true", help=f"write the classifier to {SHIP_TO}")
    args = parser.parse_args(argv)

    import torch

    from ssm_core.models import ModelInfo, from_pretrained, read_model_info
    from audio.digits import HELD_OUT_ACCENTS, HELD_OUT_VARIANTS, make_digits
    from audio.train import ClassifierExperiment, run_classifier_training

    torch.set_num_threads(1)
    digits, held_out, run = args.work / "digits", args.work / "held_out", args.work / "run"
    started = time.time()
    for root, per_class, seed, voices in ((digits, args.per_class, 0, "train"),
                                          (held_out, args.held_out_per_class, 1, "held-out")):
        if not (root / "synthesis.json").is_file():
            make_digits(root, per_class=per_class, seed=seed, voices=voices, force=True, progress=False)
    synth_seconds = time.time() - started

    exp = ClassifierExperiment.from_preset("small")
    exp.data.data = str(digits)
    exp.train.device = "cpu"
    if args.epochs is not None:
        exp.epochs = args.epochs
    if run.exists():
        shutil.rmtree(run)  # a fresh run each time: the timing is part of the result
    started = time.time()
    summary = run_classifier_training(exp, run)
    train_seconds = time.time() - started

    model = from_pretrained(run).eval()
    result = {
        "device": f"cpu_{os.cpu_count()}cores_{platform.machine()}", "torch_threads": 1,
        "training_set": f"built-in digits, {args.per_class} clips per digit (seed 0), held-out voices excluded",
        "held_out_set": f"{args.held_out_per_class} clips per digit (seed 1) with only the held-out voice variants "
                        f"{', '.join(HELD_OUT_VARIANTS)} (accents: all, incl. the held-out "
                        f"{', '.join(HELD_OUT_ACCENTS)})",
        "preset": "small", "steps": summary["steps"], "epochs": exp.epochs, "batch_size": exp.train.batch_size,
        "synthesis_seconds": round(synth_seconds, 1), "train_seconds": round(train_seconds, 1),
        "parameters": sum(p.numel() for p in model.parameters()), "valid": summary["valid"],
        **accuracies(model, digits, held_out),
    }
    if args.ship:
        info = dataclasses.replace(
            read_model_info(run), trained_on=result["training_set"].replace("built-in digits",
            "the built-in spoken-digits set (`python -m audio make-digits`, eSpeak NG voices with speed, pitch, "
            "room, noise and band-limiting variation)") + f"; held_out_voices_accuracy: on {result['held_out_set']}",
            steps=summary["steps"],
            usage="python -m audio metrics --generated samples/ --reference data/digits",
            metrics={"test_accuracy": result["test_accuracy"],
                     "held_out_voices_accuracy": result["held_out_voices_accuracy"]})
        model.save_pretrained(SHIP_TO, info, dtype=torch.float16)
        shipped = accuracies(from_pretrained(SHIP_TO).eval(), digits, held_out)  # what the fp16 copy gets
        result["shipped_fp16"] = shipped
        from ssm_core.models.io import update_model_info

        update_model_info(SHIP_TO, metrics={k: v for k, v in shipped.items() if k.endswith("accuracy")})
        print(f"shipped to {SHIP_TO}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"digits_classifier_{result['device']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    shutil.copyfile(run / "metrics.csv", path.with_name(path.stem + "_training_log.csv"))  # loss/accuracy by step
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
