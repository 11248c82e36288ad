"""The output guard every command uses (ssm_core/utils/outputs.py), the figure mark, and the directory lock."""
import json
import os

import matplotlib.pyplot as plt
import pytest

from ssm_core.utils.dirlock import DirectoryInUseError, DirectoryLock
from ssm_core.utils.outputs import (OutputRefusedError, check_output, first_line_matches, json_object_with,
                                    starts_with)
from ssm_core.utils.plots import is_suite_figure, save_figure


def test_an_input_is_never_an_output_however_it_is_spelled(tmp_path, monkeypatch):
    data = tmp_path / "inp.fa"
    data.write_text(">x\nACGT\n")
    (tmp_path / "link.fa").symlink_to(data)
    monkeypatch.chdir(tmp_path)
    for spelled in (data, "inp.fa", "./sub/../inp.fa", tmp_path / "link.fa"):
        with pytest.raises(OutputRefusedError, match="is also an input of this command"):
            check_output(spelled, lambda _: True, inputs=["inp.fa"], overwrite=True)
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "a.wav").write_bytes(b"RIFF")
    with pytest.raises(OutputRefusedError, match=r"\(.*clips/a.wav\) is also an input"):
        check_output(folder, lambda _: True, inputs=[folder / "a.wav"], files=["a.wav", "b.wav"])
    assert data.read_text() == ">x\nACGT\n"


def test_an_existing_path_is_written_over_only_if_ours_or_with_overwrite(tmp_path):
    mine = tmp_path / "notes.tsv"
    mine.write_text("my notes\n")
    ours = first_line_matches(r"file\trecord")
    with pytest.raises(OutputRefusedError, match="an existing file that this command did not write"):
        check_output(mine, ours)
    assert check_output(mine, ours, overwrite=True) == mine
    mine.write_text("file\trecord\n1\t2\n")
    assert check_output(mine, ours) == mine
    assert check_output(tmp_path / "new.tsv", lambda _: False) == tmp_path / "new.tsv"  # absent: always fine
    with pytest.raises(OutputRefusedError, match="existing folder"):
        check_output(tmp_path, ours)
    # inside a folder the command reads, --overwrite does not apply: the file may be one it reads
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    with pytest.raises(OutputRefusedError, match="inside the input folder"):
        check_output(run / "metrics.json", ours, inputs=[run], overwrite=True)
    assert check_output(run / "new.tsv", ours, inputs=[run]) == run / "new.tsv"


def test_recognisers(tmp_path):
    report = tmp_path / "m.json"
    report.write_text(json.dumps({"fid": 1, "is": 2, "extra": 3}))
    assert json_object_with(["fid", "is"])(report) and not json_object_with(["fid", "am"])(report)
    report.write_text("[1, 2]")
    assert not json_object_with(["fid"])(report) and not json_object_with(["fid"])(tmp_path)
    assert starts_with(b"[1")(report) and not starts_with(b"{")(report)
    assert not first_line_matches("x")(tmp_path / "missing")


def test_figures_carry_the_suite_mark_and_are_written_atomically(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    ours = save_figure(fig, tmp_path / "a.png")
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    fig.savefig(tmp_path / "theirs.png")  # a matplotlib PNG, but not one of ours
    plt.close(fig)
    assert is_suite_figure(ours) and not is_suite_figure(tmp_path / "theirs.png")
    (tmp_path / "text.png").write_text("not a png")
    assert not is_suite_figure(tmp_path / "text.png") and not is_suite_figure(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "text.png", "theirs.png"]  # no temporary left


def test_the_directory_lock_names_its_holder_and_is_released(tmp_path):
    import socket

    with DirectoryLock(tmp_path, "main job run"):
        with pytest.raises(DirectoryInUseError, match=f"main job run {tmp_path} is in use by process "
                                                      f"{os.getpid()} on {socket.gethostname()}"):
            DirectoryLock(tmp_path, "main job run").acquire()
    with DirectoryLock(tmp_path):
        pass
