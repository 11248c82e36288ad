"""Write notebooks/audio_quickstart.ipynb (run this script after editing the cells below).

    python notebooks/make_audio_quickstart.py
"""
from nbformat.v4 import new_code_cell, new_markdown_cell

from builder import command_cell, write_notebook

CELLS = [
    new_markdown_cell("""\
# Audio quickstart: a SaShiMi-Mamba waveform model, from spoken digits to scored samples

The whole `python -m audio` workflow at a size that runs in a few minutes on a laptop CPU:

1. **make-digits**: build the embedded spoken-digits set (SC09's layout, 16 kHz, 1 s clips, synthesised by
   eSpeak NG -- no download),
2. **train** a tiny SaShiMi U-Net of Mamba blocks on raw 8-bit mu-law samples (NLL in bits per sample),
3. **generate** clips autoregressively in recurrent mode and listen to them,
4. **train-classifier**: the SC09 ResNeXt the metrics use (a toy width here),
5. **metrics**: FID, IS, mIS and AM of the generated clips against the training clips,
6. **plot** waveform and spectrogram grids.

Each step is one command, run in-process through `audio.cli.main` with exactly the arguments you would type after
`python -m audio`. At this size (80 K parameters, a few dozen steps on short crops) the model produces noise with
a little structure, and the classifier is near chance: the point is the workflow. The paper's models
(`--preset 6.1m` / `24.3m`, 200K steps on SC09) are for a GPU; see `benchmarks/audio_generation.py`."""),
    command_cell("audio", stdlib=("json",), imports="""\
import soundfile as sf
from IPython.display import Audio, Image, display"""),
    new_markdown_cell("""\
## 1. The spoken-digits set

Ten classes (`zero/` ... `nine/`), 1 s at 16 kHz, with `validation_list.txt` and `testing_list.txt` naming the
held-out clips -- the layout of SC09, so every command below works on the real SC09 (`python -m audio fetch sc09`)
unchanged. Voices, speaking rate, pitch, gain and background noise vary from clip to clip."""),
    new_code_cell("""\
audio("make-digits --out digits --per-class 10 --seed 0")
clip = sorted(Path("digits/seven").glob("*.wav"))[0]
print(clip, sf.info(clip).samplerate, "Hz,", sf.info(clip).frames, "samples")
display(Audio(str(clip)))"""),
    new_markdown_cell("""\
## 2. Train the waveform model

`--preset tiny`: outer width 16, pools 4 and 4 (widths 16, 32, 64), one Mamba block in each of the five groups.
`--crop 1024` trains on a random 1024-sample crop of each clip (the paper trains on whole 1 s clips). The
validation NLL is in bits per sample: 8 bits is a uniform guess over the 256 mu-law codes."""),
    new_code_cell("""\
audio("train --data digits --out runs/tiny --preset tiny --steps 100 --batch-size 8 --crop 1024 "
      "--valid-samples 16 --device cpu")
print(json.dumps(json.load(open("runs/tiny/metrics.json"))["valid"], indent=2))
display(Image("runs/tiny/plots/metrics.png"))"""),
    new_markdown_cell("""\
## 3. Generate and listen

Generation runs the model in recurrent mode: the outer level steps every sample, the middle level every 4th and
the centre every 16th, each from its own state -- the same function as the parallel forward used in training
(the tests check they agree). `nll.csv` records each clip's likelihood under the model, which
`metrics --nll ... --select band` uses to filter generated sets as the s4 evaluation does."""),
    new_code_cell("""\
audio("generate --checkpoint runs/tiny --n 6 --seconds 0.25 --batch-size 6 --seed 0 --out samples --device cpu")
print(open("samples/nll.csv").read())
for wav in sorted(Path("samples").glob("*.wav"))[:2]:
    display(Audio(str(wav)))"""),
    new_markdown_cell("""\
## 4. The SC09 classifier and the metrics

The metrics run a ResNeXt on log-mel spectrograms (the s4 repository's classifier); FID compares its penultimate
features, IS / mIS / AM its predictions. `--preset tiny` is a toy width for this demo; `resnext29` is the real
one. Generated clips shorter than 1 s are zero-padded, as the classifier expects 1 s. Six clips are far fewer than
the 65 a full-rank covariance of the tiny classifier's 64 features needs: `--allow-few-clips` scores them anyway,
with an FID biased upward."""),
    new_code_cell("""\
audio("train-classifier --data digits --out runs/classifier --preset tiny --epochs 2 --batch-size 16 --device cpu")
audio("metrics --generated samples --reference digits --classifier runs/classifier --json metrics.json "
      "--allow-few-clips --device cpu")"""),
    new_markdown_cell("""\
What these numbers can show at this size: the validation NLL against the 8 bits of a uniform guess says whether
the waveform model learned anything; the classifier's test accuracy against chance (10%) says how much the
metrics can be trusted. With a classifier near chance and six clips, FID, IS, mIS and AM measure little: they
are here to show the workflow. The tests re-run this notebook and compare the numbers below with the committed
outputs."""),
    new_code_cell("""\
metrics = json.load(open("metrics.json"))
results = {"valid_bits_per_sample": json.load(open("runs/tiny/metrics.json"))["valid"]["bits_per_sample"],
           "classifier_test_accuracy": json.load(open("runs/classifier/metrics.json"))["test_accuracy"],
           **{name: metrics[name] for name in ("fid", "is", "mis", "am")}}
print(f"validation NLL {results['valid_bits_per_sample']:.3f} bits per sample (uniform guess: 8); classifier "
      f"test accuracy {100 * results['classifier_test_accuracy']:.0f}% (chance 10%)")
print(json.dumps(results))""", metadata={"tags": ["results"]}),
    new_markdown_cell("""\
## 5. Look at the clips

Waveforms and spectrograms of the generated clips, and of real ones for comparison."""),
    new_code_cell("""\
audio("plot --clips samples --kind waveform --n 6 --columns 3 --out samples_waveforms.png")
display(Image("samples_waveforms.png"))
audio("plot --clips samples --kind spectrogram --n 6 --columns 3 --out samples_spectrograms.png")
display(Image("samples_spectrograms.png"))
audio("plot --clips digits --split test --kind spectrogram --n 6 --columns 3 --out digits_spectrograms.png")
display(Image("digits_spectrograms.png"))"""),
]


if __name__ == "__main__":
    write_notebook(CELLS, "audio_quickstart")
