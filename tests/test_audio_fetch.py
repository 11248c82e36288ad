"""`python -m audio fetch` on local file:// tarballs: SC09 extraction, checksum verification, bad manifests."""
import io
import json
import tarfile
import zipfile

import numpy as np
import pytest
import soundfile as sf

from audio.cli import main
from audio.datasets import LabelledAudioSet
from audio.manifests import extract_sc09, fetch, load_manifest
from ssm_core.utils.download import ChecksumError, sha256sum


def wav_bytes(seed):
    buffer = io.BytesIO()
    wave = (0.3 * np.random.default_rng(seed).standard_normal(16000)).astype(np.float32)
    sf.write(buffer, wave, 16000, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def speech_commands_tarball(path):
    """A miniature Speech Commands v0.02: digit and non-digit words, background noise, split lists, licence."""
    members = {}
    for word in ("zero", "one", "nine", "bed", "marvin"):
        for spk in ("aaaa1111", "bbbb2222"):
            members[f"./{word}/{spk}_nohash_0.wav"] = wav_bytes(len(members))
    members["./_background_noise_/white_noise.wav"] = wav_bytes(99)
    members["./validation_list.txt"] = b"bed/aaaa1111_nohash_0.wav\nzero/aaaa1111_nohash_0.wav\n"
    members["./testing_list.txt"] = b"one/bbbb2222_nohash_0.wav\nmarvin/bbbb2222_nohash_0.wav\nnine/bbbb2222_nohash_0.wav\n"
    members["./LICENSE"] = b"CC-BY-4.0\n"
    members["../evil.wav"] = wav_bytes(7)  # a member climbing out of the destination is ignored
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_manifest(tmp_path, archive, sha256, post_process="extract_sc09", name="sc09"):
    manifest = {
        "name": name, "description": "test", "licence": "CC-BY-4.0", "citation": "none",
        "files": [{"url": archive.as_uri(), "filename": archive.name, "size": archive.stat().st_size,
                   "sha256": sha256, "note": ""}],
        "post_process": post_process,
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(manifest))
    return path


def test_fetch_sc09_from_file_url(tmp_path, capsys):
    tarball = speech_commands_tarball(tmp_path / "speech_commands_v0.02.tar.gz")
    manifest = write_manifest(tmp_path, tarball, sha256sum(tarball))
    assert main(["fetch", str(manifest), "--dest", str(tmp_path / "data")]) == 0
    assert "sc09 ready in" in capsys.readouterr().out
    root = tmp_path / "data" / "sc09"
    assert sorted(p.name for p in root.iterdir()) == ["LICENSE", "nine", "one", "testing_list.txt",
                                                     "validation_list.txt", "zero"]
    assert (root / "validation_list.txt").read_text() == "zero/aaaa1111_nohash_0.wav\n"
    assert (root / "testing_list.txt").read_text() == "one/bbbb2222_nohash_0.wav\nnine/bbbb2222_nohash_0.wav\n"
    assert not (tmp_path / "data" / "evil.wav").exists() and not (tmp_path / "evil.wav").exists()
    sizes = [len(LabelledAudioSet(root, s)) for s in ("train", "validation", "test")]
    assert sizes == [3, 1, 2]
    # fetching again reuses the verified download and rebuilds the same layout
    assert main(["fetch", str(manifest), "--dest", str(tmp_path / "data")]) == 0
    assert len(LabelledAudioSet(root, "all")) == 6


def test_fetch_never_replaces_a_data_folder_it_did_not_make(tmp_path, capsys):
    tarball = speech_commands_tarball(tmp_path / "speech_commands_v0.02.tar.gz")
    manifest = write_manifest(tmp_path, tarball, sha256sum(tarball))
    mine = tmp_path / "data" / "sc09"
    mine.mkdir(parents=True)
    (mine / "my_recordings.txt").write_text("mine\n")
    assert main(["fetch", str(manifest), "--dest", str(tmp_path / "data")]) == 1
    assert f"error: --dest {mine}: an existing folder that this command did not write" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["my_recordings.txt"]
    assert not (tmp_path / "data" / "downloads").exists()  # refused before downloading
    assert main(["fetch", str(manifest), "--dest", str(tmp_path / "data"), "--overwrite"]) == 0
    assert (mine / "validation_list.txt").is_file()


def test_corrupted_download_is_detected_and_nothing_extracted(tmp_path, capsys):
    tarball = speech_commands_tarball(tmp_path / "speech_commands_v0.02.tar.gz")
    good_sha = sha256sum(tarball)
    corrupted = bytearray(tarball.read_bytes())
    corrupted[len(corrupted) // 2] ^= 0xFF
    tarball.write_bytes(bytes(corrupted))
    manifest = write_manifest(tmp_path, tarball, good_sha)
    with pytest.raises(ChecksumError, match="sha256"):
        fetch(load_manifest(manifest), tmp_path / "data", progress=False)
    assert not (tmp_path / "data" / "sc09").exists()
    assert not list((tmp_path / "data" / "downloads").iterdir())  # the bad bytes were not kept
    assert main(["fetch", str(manifest), "--dest", str(tmp_path / "data2")]) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the licence line and the progress bars
    assert last.startswith("error: ") and "sha256" in last and "Traceback" not in err


def test_a_tarball_without_digit_words_is_refused(tmp_path):
    path = tmp_path / "other.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("bed/a.wav")
        data = wav_bytes(0)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match="no digit-word WAV files"):
        extract_sc09(path, tmp_path / "sc09", progress=False)
    assert not (tmp_path / "sc09").exists() and not (tmp_path / "sc09.partial").exists()


def test_unzip_post_process(tmp_path):
    archive = tmp_path / "youtubemix.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("youtubemix/out000.wav", wav_bytes(1))
        z.writestr("youtubemix/out001.wav", wav_bytes(2))
    manifest = write_manifest(tmp_path, archive, sha256sum(archive), post_process="unzip", name="youtubemix")
    data = fetch(load_manifest(manifest), tmp_path / "data", progress=False)
    assert sorted(p.name for p in (data / "youtubemix").iterdir()) == ["out000.wav", "out001.wav"]


def test_manifest_errors(tmp_path, capsys):
    assert main(["fetch", "no-such-manifest", "--dest", str(tmp_path)]) == 1
    assert "no manifest 'no-such-manifest'" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "files": []}))
    with pytest.raises(ValueError, match=r"bad\.json: not a valid data manifest"):
        load_manifest(bad)
    odd = write_manifest(tmp_path, bad, None, post_process="transmogrify")
    with pytest.raises(ValueError, match="unknown post_process"):
        load_manifest(odd)


def test_shipped_manifests_are_valid():
    sc09 = load_manifest("sc09")
    assert sc09.licence == "CC-BY-4.0" and sc09.post_process == "extract_sc09"
    assert sc09.files[0].url.endswith("speech_commands_v0.02.tar.gz") and len(sc09.files[0].sha256) == 64
    youtubemix = load_manifest("youtubemix")
    assert youtubemix.post_process == "unzip" and "huggingface.co/datasets/krandiash/youtubemix" in youtubemix.files[0].url
