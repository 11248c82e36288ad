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
from audio.errors import AudioNotice
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
    err = capsys.readouterr().err
    assert f"{mine} already exists" in err and "only what it made itself" in err and "--overwrite" in err
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


# --- issue #17: nothing outside --dest is written or deleted; nothing a user had in it is replaced -----------------

def victim_dir(tmp_path):
    """A folder outside --dest with a file of the user's in it."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("mine")
    return victim


@pytest.mark.parametrize("field, value", [
    ("name", "../victim"), ("name", "ABSOLUTE"), ("name", ""), ("name", "."), ("name", ".."), ("name", "a/b"),
    ("name", "a\\b"), ("name", "C:victim"), ("name", "x\x00y"), ("name", "downloads"), ("name", "Downloads"),
    ("name", ".fetch"), ("name", 5), ("name", "x" * 256),
    ("filename", ".."), ("filename", "x\x00y"), ("filename", "a\\b"), ("filename", 5),
])
def test_an_unsafe_manifest_name_is_refused_before_any_download(tmp_path, assert_refused, field, value):
    victim = victim_dir(tmp_path)
    value = str(victim) if value == "ABSOLUTE" else value
    tarball = speech_commands_tarball(tmp_path / "speech_commands_v0.02.tar.gz")
    manifest = write_manifest(tmp_path, tarball, sha256sum(tarball))
    data = json.loads(manifest.read_text())
    if field == "name":
        data["name"] = value
    else:
        data["files"][0]["filename"] = value
    manifest.write_text(json.dumps(data))
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / "mine.txt").write_text("mine")
    assert_refused(main(["fetch", str(manifest), "--dest", str(dest)]), str(manifest), f'"{field}"')
    assert sorted(p.name for p in dest.iterdir()) == ["mine.txt"]  # nothing downloaded, nothing removed
    assert sorted(p.name for p in victim.iterdir()) == ["precious.txt"]


def test_every_entry_is_checked_before_the_first_download(tmp_path, assert_refused):
    tarball = speech_commands_tarball(tmp_path / "speech_commands_v0.02.tar.gz")
    manifest = write_manifest(tmp_path, tarball, sha256sum(tarball))
    data = json.loads(manifest.read_text())
    data["files"].append(dict(data["files"][0], filename=".."))
    manifest.write_text(json.dumps(data))
    assert_refused(main(["fetch", str(manifest), "--dest", str(tmp_path / "data")]), 'files[1], "filename"')
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("link", ["sc09", "downloads", ".fetch"])
def test_a_symlink_in_dest_leading_outside_is_refused(tmp_path, assert_refused, link):
    victim = victim_dir(tmp_path)
    tarball = speech_commands_tarball(tmp_path / "speech_commands_v0.02.tar.gz")
    manifest = write_manifest(tmp_path, tarball, sha256sum(tarball))
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / link).symlink_to(victim)
    assert_refused(main(["fetch", str(manifest), "--dest", str(dest)]), str(manifest), "leads outside")
    assert sorted(p.name for p in victim.iterdir()) == ["precious.txt"]
    assert sorted(p.name for p in dest.iterdir()) == [link]


def test_a_folder_fetch_did_not_make_is_never_replaced(tmp_path, assert_refused):
    tarball = speech_commands_tarball(tmp_path / "speech_commands_v0.02.tar.gz")
    manifest = write_manifest(tmp_path, tarball, sha256sum(tarball))
    dest = tmp_path / "data"
    (dest / "sc09").mkdir(parents=True)
    (dest / "sc09" / "my_notes.txt").write_text("mine")
    (dest / "sc09.partial").mkdir()  # the temporary name the old code removed first
    (dest / "sc09.partial" / "mine.txt").write_text("mine")
    assert_refused(main(["fetch", str(manifest), "--dest", str(dest)]), str(dest / "sc09"),
                   "move it away")
    assert not (dest / "downloads").exists() and (dest / "sc09" / "my_notes.txt").read_text() == "mine"
    (dest / "sc09").rename(tmp_path / "moved")
    assert main(["fetch", str(manifest), "--dest", str(dest)]) == 0
    assert main(["fetch", str(manifest), "--dest", str(dest)]) == 0  # its own output, stamped: replaced
    assert len(LabelledAudioSet(dest / "sc09", "all")) == 6
    assert (dest / "sc09.partial" / "mine.txt").read_text() == "mine"
    assert sorted(p.name for p in dest.iterdir()) == [".fetch", "downloads", "sc09", "sc09.partial"]
    assert json.loads((dest / ".fetch" / "sc09.json").read_text())["files"][0]["verified_by"] == "sha256 pinned"


def test_unsafe_archive_members_are_skipped(tmp_path):
    tarball = speech_commands_tarball(tmp_path / "speech_commands_v0.02.tar.gz")
    with tarfile.open(tarball, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(tarball, "w:gz") as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data))
        for name, kind, target in [("zero/link.wav", tarfile.SYMTYPE, "../../victim/precious.txt"),
                                   ("zero/hard.wav", tarfile.LNKTYPE, "../victim/precious.txt"),
                                   ("zero/dev.wav", tarfile.CHRTYPE, "")]:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
        for name in ("/zero/abs.wav", "zero\\..\\..\\evil.wav"):
            info = tarfile.TarInfo(name)
            data = wav_bytes(3)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    victim = victim_dir(tmp_path)
    manifest = write_manifest(tmp_path, tarball, sha256sum(tarball))
    with pytest.warns(AudioNotice, match=r"skipped 6 member\(s\)"):  # these five and ../evil.wav
        assert main(["fetch", str(manifest), "--dest", str(tmp_path / "data")]) == 0
    zero = tmp_path / "data" / "sc09" / "zero"
    assert sorted(p.name for p in zero.iterdir()) == ["aaaa1111_nohash_0.wav", "bbbb2222_nohash_0.wav"]
    assert sorted(p.name for p in victim.iterdir()) == ["precious.txt"]


def test_a_zip_symlink_member_is_not_extracted(tmp_path):
    archive = tmp_path / "youtubemix.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("youtubemix/out000.wav", wav_bytes(1))
        link = zipfile.ZipInfo("youtubemix/link.wav")
        link.external_attr = (0o120777 << 16)  # a symlink, as Info-ZIP stores it
        z.writestr(link, "../../victim/precious.txt")
        z.writestr("youtubemix\\..\\..\\evil.wav", wav_bytes(2))
    manifest = write_manifest(tmp_path, archive, sha256sum(archive), post_process="unzip", name="youtubemix")
    with pytest.warns(AudioNotice, match=r"skipped 2 member\(s\)"):
        assert main(["fetch", str(manifest), "--dest", str(tmp_path / "data")]) == 0
    assert [p.name for p in (tmp_path / "data" / "youtubemix").rglob("*") if p.is_file()] == ["out000.wav"]


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_a_damaged_unverified_archive_is_a_clear_error(tmp_path, assert_refused, damage, kind):
    if kind == "tar":
        archive = speech_commands_tarball(tmp_path / "speech_commands_v0.02.tar.gz")
    else:
        archive = tmp_path / "youtubemix.zip"
        with zipfile.ZipFile(archive, "w") as z:
            z.writestr("youtubemix/out000.wav", wav_bytes(1))
    good = archive.read_bytes()
    archive.write_bytes(good[: len(good) // 2] if damage == "truncated"
                        else good[:10] + bytes(200) + good[210:])
    name = "sc09" if kind == "tar" else "youtubemix"
    manifest = write_manifest(tmp_path, archive, None, post_process="extract_sc09" if kind == "tar" else "unzip",
                              name=name)
    data = json.loads(manifest.read_text())
    data["files"][0]["size"] = None  # nothing to verify it by, as for youtubemix
    manifest.write_text(json.dumps(data))
    dest = tmp_path / "data"
    assert_refused(main(["fetch", str(manifest), "--dest", str(dest)]), archive.as_uri())
    assert sorted(p.name for p in dest.iterdir()) == [".fetch", "downloads"]  # no data or temporary folder
    assert not list((dest / ".fetch").iterdir())  # and no stamp claiming a folder that was never made
    assert not list((dest / "downloads").iterdir())  # the damaged download is not kept to be reused
    archive.write_bytes(good)
    assert main(["fetch", str(manifest), "--dest", str(dest)]) == 0
    assert (dest / name).is_dir()


def test_an_unverified_download_is_named_in_a_notice_and_in_the_stamp(tmp_path):
    tarball = speech_commands_tarball(tmp_path / "speech_commands_v0.02.tar.gz")
    manifest = write_manifest(tmp_path, tarball, None)
    with pytest.warns(AudioNotice, match=f"{tarball.name}: sha256 {sha256sum(tarball)} \\(nothing verified it"):
        assert main(["fetch", str(manifest), "--dest", str(tmp_path / "data")]) == 0
    stamp = json.loads((tmp_path / "data" / ".fetch" / "sc09.json").read_text())
    assert stamp["files"][0]["verified_by"] == "none" and stamp["files"][0]["sha256"] == sha256sum(tarball)
