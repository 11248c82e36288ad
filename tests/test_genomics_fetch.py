"""fetch: file:// downloads, corrupt downloads detected and re-fetched, resume, post-processing, CLI."""
import gzip
import io
import json

import numpy as np
import pytest

import ssm_core.utils.download as download_module
from genomics.cli import main
from genomics.errors import GenomicsInputError
from genomics.fasta import gzip_kind, open_fasta
from genomics.manifests import fetch_manifest, load_manifest
from genomics.tokenizer import decode
from ssm_core.utils.download import ChecksumError, CorruptFileError, md5sum, sha256sum


@pytest.fixture
def source(tmp_path):
    """A plain-gzip FASTA of 400 kbp and a BED file."""
    rng = np.random.default_rng(0)
    sequence = np.frombuffer(b"ACGT", dtype=np.uint8)[rng.integers(0, 4, size=400_000)].tobytes().decode()
    lines = "\n".join(sequence[i:i + 60] for i in range(0, len(sequence), 60))
    fasta = tmp_path / "src" / "genome.fa.gz"
    fasta.parent.mkdir()
    with gzip.open(fasta, "wt", compresslevel=1) as f:
        f.write(">chr1\n" + lines + "\n")
    bed = tmp_path / "src" / "sequences.bed"
    bed.write_text("chr1\t0\t1000\ttrain\n")
    return {"fasta": fasta, "bed": bed, "sequence": sequence}


def write_manifest(tmp_path, source, sha_fasta="auto", post=("bgzip", "faidx"), output="toy.fa.bgz"):
    manifest = {
        "name": "toy", "kind": "genomics", "description": "test data", "licence": "CC0", "citation": [],
        "files": [
            {"filename": "genome.fa.gz", "url": source["fasta"].as_uri(), "output": output,
             "sha256": sha256sum(source["fasta"]) if sha_fasta == "auto" else sha_fasta, "size": None,
             "post": list(post)},
            {"filename": "sequences.bed", "url": source["bed"].as_uri(), "sha256": sha256sum(source["bed"])},
        ]}
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(manifest))
    return path


def check_output(dest, source):
    fasta_path = dest / "toy.fa.bgz"
    assert gzip_kind(fasta_path) == "bgzf" and (dest / "toy.fa.bgz.fai").exists()
    fasta = open_fasta(fasta_path, quiet=True)
    assert decode(fasta.fetch("chr1", 300_000, 300_500)) == source["sequence"][300_000:300_500]
    assert (dest / "sequences.bed").read_text() == source["bed"].read_text()
    assert not (dest / ".downloads" / "genome.fa.gz").exists()  # downloads are removed once processed


def test_fetch_verifies_recompresses_and_indexes(tmp_path, source, monkeypatch):
    manifest = write_manifest(tmp_path, source)
    dest = tmp_path / "data"
    outputs = fetch_manifest(manifest, dest, quiet=True)
    assert outputs == [dest / "toy.fa.bgz", dest / "sequences.bed"]
    check_output(dest, source)
    stamp = json.loads((dest / ".fetch" / "toy.fa.bgz.json").read_text())
    assert stamp["sha256"] == sha256sum(source["fasta"])
    calls = []
    monkeypatch.setattr("ssm_core.utils.download.download", lambda *a, **k: calls.append(a))
    assert fetch_manifest(manifest, dest, quiet=True) == outputs  # already fetched: nothing downloaded
    assert calls == []
    monkeypatch.undo()
    (dest / "toy.fa.bgz").write_bytes(b"overwritten")  # a damaged output is fetched again, not trusted
    assert fetch_manifest(manifest, dest, quiet=True) == outputs
    check_output(dest, source)


def test_fetch_never_replaces_a_file_it_did_not_fetch(tmp_path, source, capsys):
    manifest = write_manifest(tmp_path, source)
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / "sequences.bed").write_text("my own intervals\n")
    assert main(["fetch", str(manifest), "--dest", str(dest)]) == 1
    err = capsys.readouterr().err
    assert f"{dest / 'sequences.bed'} already exists" in err and "--overwrite" in err
    assert sorted(p.name for p in dest.iterdir()) == ["sequences.bed"]  # refused before any download
    assert (dest / "sequences.bed").read_text() == "my own intervals\n"
    assert main(["fetch", str(manifest), "--dest", str(dest), "--overwrite"]) == 0
    check_output(dest, source)


def test_corrupt_download_is_detected_and_fetched_again(tmp_path, source, capsys):
    manifest = write_manifest(tmp_path, source)
    dest = tmp_path / "data"
    corrupt = dest / ".downloads" / "genome.fa.gz"
    corrupt.parent.mkdir(parents=True)
    good = source["fasta"].read_bytes()
    corrupt.write_bytes(good[:1000] + b"garbage" + good[1007:])  # same size, wrong content
    fetch_manifest(manifest, dest)
    assert "checksum mismatch" in capsys.readouterr().out
    check_output(dest, source)


def test_corrupt_partial_download_is_discarded_and_restarted(tmp_path, source, capsys):
    manifest = write_manifest(tmp_path, source)
    dest = tmp_path / "data"
    part = dest / ".downloads" / "genome.fa.gz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\x00" * 5000)  # resumed from, then fails verification
    fetch_manifest(manifest, dest)
    assert "retrying from scratch" in capsys.readouterr().out
    check_output(dest, source)


def test_partial_download_is_resumed(tmp_path, source, monkeypatch):
    manifest = write_manifest(tmp_path, source)
    dest = tmp_path / "data"
    part = dest / ".downloads" / "genome.fa.gz.part"
    part.parent.mkdir(parents=True)
    good = source["fasta"].read_bytes()
    part.write_bytes(good[: len(good) // 2])
    offsets = []
    real_open = download_module._open

    def spy(url, offset):
        offsets.append(offset)
        return real_open(url, offset)

    monkeypatch.setattr(download_module, "_open", spy)
    fetch_manifest(manifest, dest, quiet=True, only=["toy"])
    assert offsets == [len(good) // 2]  # one request, starting where the partial file ended
    assert (dest / "toy.fa.bgz").exists() and not (dest / "sequences.bed").exists()


def test_known_mismatching_checksum_is_refused(tmp_path, source, capsys):
    manifest = write_manifest(tmp_path, source, sha_fasta="0" * 64)
    dest = tmp_path / "data"
    with pytest.raises(ChecksumError):
        fetch_manifest(manifest, dest, quiet=True)
    assert not (dest / "toy.fa.bgz").exists()
    assert main(["fetch", str(manifest), "--dest", str(dest)]) == 1
    assert "error:" in capsys.readouterr().err and not (dest / "toy.fa.bgz").exists()


def test_unknown_checksum_is_printed_and_a_newly_pinned_one_refetches(tmp_path, source, capsys):
    manifest = write_manifest(tmp_path, source, sha_fasta=None, post=("decompress", "faidx"), output="toy.fa")
    dest = tmp_path / "data"
    assert main(["fetch", str(manifest), "--dest", str(dest)]) == 0
    err = capsys.readouterr().err
    assert f"genome.fa.gz: sha256 {sha256sum(source['fasta'])} (nothing verified it" in err
    assert json.loads((dest / ".fetch" / "toy.fa.json").read_text())["verified_by"] == "none"
    assert gzip_kind(dest / "toy.fa") is None and (dest / "toy.fa.fai").exists()
    (dest / "toy.fa").write_text(">stale\nAC\n")  # a file the stamp no longer vouches for ...
    data = json.loads(manifest.read_text())
    data["files"][0]["sha256"] = "f" * 64  # ... once the manifest pins a checksum this file does not have
    manifest.write_text(json.dumps(data))
    with pytest.raises(ChecksumError):
        fetch_manifest(manifest, dest, quiet=True)


def listed_manifest(tmp_path, source, listing: str, **extra):
    """A manifest of the FASTA with no pinned checksum, verified through the md5sum list ``listing``."""
    (tmp_path / "src" / "md5sum.txt").write_text(listing)
    manifest = {"name": "listed", "kind": "genomics", "files": [
        {"filename": "genome.fa.gz", "url": source["fasta"].as_uri(), "output": "toy.fa", "sha256": None,
         "checksums_url": (tmp_path / "src" / "md5sum.txt").as_uri(), "post": ["decompress"], **extra}]}
    path = tmp_path / "listed.json"
    path.write_text(json.dumps(manifest))
    return path


def test_a_file_is_verified_against_the_publishers_md5_list(tmp_path, source, capsys):
    good = md5sum(source["fasta"])
    listing = f"{'0' * 32}  other.fa.gz\n{good} *./genome.fa.gz\n\n"  # binary marker and ./ as md5sum writes them
    dest = tmp_path / "data"
    assert fetch_manifest(listed_manifest(tmp_path, source, listing), dest) == [dest / "toy.fa"]
    stamp = json.loads((dest / ".fetch" / "toy.fa.json").read_text())
    assert stamp["verified_by"] == f"md5 from {(tmp_path / 'src' / 'md5sum.txt').as_uri()}"
    assert stamp["sha256"] == sha256sum(source["fasta"])
    assert f"md5 {good} from" in capsys.readouterr().err


def test_a_download_that_contradicts_the_md5_list_is_never_used(tmp_path, source):
    dest = tmp_path / "data"
    with pytest.raises(ChecksumError, match="md5 .* != expected " + "a" * 32):
        fetch_manifest(listed_manifest(tmp_path, source, f"{'a' * 32}  genome.fa.gz\n"), dest, quiet=True)
    assert not (dest / "toy.fa").exists() and not list((dest / ".downloads").glob("genome.fa.gz*"))
    pinned = listed_manifest(tmp_path, source, f"{md5sum(source['fasta'])}  genome.fa.gz\n", md5="b" * 32)
    with pytest.raises(ChecksumError):  # a pinned md5 wins over the list, and this one is wrong
        fetch_manifest(pinned, dest, quiet=True)
    assert not (dest / "toy.fa").exists()


def test_a_checksum_list_without_the_file_or_not_in_md5sum_format_is_named(tmp_path, source):
    with pytest.raises(GenomicsInputError, match=r"md5sum.txt lists no checksum for genome.fa.gz"):
        fetch_manifest(listed_manifest(tmp_path, source, f"{'0' * 32}  other.fa.gz\n"), tmp_path / "d1")
    with pytest.raises(GenomicsInputError, match=r"md5sum.txt, line 2: not an md5sum line"):
        fetch_manifest(listed_manifest(tmp_path, source, f"{'0' * 32}  a\n<html>oops</html>\n"), tmp_path / "d2")
    assert not (tmp_path / "d1" / "toy.fa").exists() and not (tmp_path / "d2" / "toy.fa").exists()


def test_bad_manifests_are_reported(tmp_path):
    path = tmp_path / "m.json"
    for content, message in [
        ("{not json", "not valid JSON"),
        ('{"kind": "genomics", "files": []}', "non-empty 'files' list"),
        ('{"files": [{"filename": "a", "url": "file:///a"}]}', "not a genomics manifest"),
        ('{"kind": "genomics", "files": [{"url": "file:///a"}]}', r"files\[0\]: missing \['filename'\]"),
        ('{"kind": "genomics", "files": [{"filename": "a", "url": "u", "post": ["unzip"]}]}', "unknown post"),
        ('{"kind": "genomics", "files": [{"filename": "a", "url": "u", "sha256": "abc"}]}', "64 hex digits"),
        ('{"kind": "genomics", "files": [{"filename": "a", "url": "u", "md5": "' + "g" * 32 + '"}]}',
         r"files\[0\]: md5 must be 32 hex digits"),
    ]:
        path.write_text(content)
        with pytest.raises(GenomicsInputError, match=message):
            load_manifest(path)
    with pytest.raises(GenomicsInputError, match="no manifest 'nonexistent'"):
        load_manifest("nonexistent")


def test_shipped_manifests_load():
    hg38 = load_manifest("hg38")
    assert [f.output for f in hg38.files] == ["hg38.ml.fa", "human-sequences.bed"]
    apes = load_manifest("great_apes")
    assert [f.output for f in apes.files] == [f"{s}.fa.bgz" for s in
                                              ("human", "chimpanzee", "bonobo", "gorilla", "orangutan")]
    for manifest in (hg38, apes):
        assert manifest.info["licence"] and manifest.info["citation"]
        assert all(f.url.startswith("https://") and (f.sha256 or f.note) for f in manifest.files)
    # every assembly is verified at fetch time: against UCSC's md5sum.txt beside it, if nothing is pinned
    for f in apes.files:
        assert f.sha256 or f.md5 or f.checksums_url == f.url.rsplit("/", 1)[0] + "/md5sum.txt", f.name


# --- issue #17: nothing outside --dest is written or deleted; nothing a user had in it is replaced -----------------

def victim_file(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    return victim


@pytest.mark.parametrize("field, value", [
    ("output", ".."), ("output", "."), ("output", ""), ("output", "ABSOLUTE"), ("output", "a\\b"),
    ("output", "C:victim.txt"), ("output", "x\x00y"), ("output", ".fetch"), ("output", ".Downloads"), ("output", 5),
    ("output", None), ("filename", ".."), ("filename", "x\ny"), ("filename", 5),
])
def test_an_unsafe_manifest_name_is_refused_before_any_download(tmp_path, source, assert_refused, field, value):
    victim = victim_file(tmp_path)
    value = str(victim) if value == "ABSOLUTE" else value
    manifest = write_manifest(tmp_path, source)
    data = json.loads(manifest.read_text())
    data["files"][1][field] = value  # the first file is fine: it must not be downloaded either
    manifest.write_text(json.dumps(data))
    dest = tmp_path / "data"
    dest.mkdir()
    assert_refused(main(["fetch", str(manifest), "--dest", str(dest)]), str(manifest), "files[1]",
                   f'"{field}"')
    assert not list(dest.iterdir()) and victim.read_text() == "mine"


def test_repeated_file_names_are_refused(tmp_path, source):
    manifest = write_manifest(tmp_path, source)
    data = json.loads(manifest.read_text())
    data["files"][1]["filename"] = "genome.fa.gz"
    manifest.write_text(json.dumps(data))
    with pytest.raises(GenomicsInputError, match=r"files\[1\]: filename 'genome.fa.gz' is repeated"):
        load_manifest(manifest)


@pytest.mark.parametrize("link, to_folder", [(".downloads", True), (".fetch", True), ("sequences.bed", False),
                                             ("toy.fa.bgz.fai", False)])
def test_a_symlink_in_dest_leading_outside_is_refused(tmp_path, source, assert_refused, link, to_folder):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = victim_file(outside)
    manifest = write_manifest(tmp_path, source)
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / link).symlink_to(outside if to_folder else victim)
    rc = main(["fetch", str(manifest), "--dest", str(dest), "--keep-downloads"])
    assert_refused(rc, str(manifest), "leads outside")
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"] and victim.read_text() == "mine"
    assert sorted(p.name for p in dest.iterdir()) == [link]


def test_a_file_fetch_did_not_make_is_never_replaced(tmp_path, source, assert_refused):
    manifest = write_manifest(tmp_path, source)
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / "sequences.bed").write_text("my own intervals\n")
    assert_refused(main(["fetch", str(manifest), "--dest", str(dest)]), str(dest / "sequences.bed"),
                   "move it away")
    assert sorted(p.name for p in dest.iterdir()) == ["sequences.bed"]  # nothing downloaded
    assert (dest / "sequences.bed").read_text() == "my own intervals\n"
    (dest / "sequences.bed").unlink()
    assert main(["fetch", str(manifest), "--dest", str(dest), "--force"]) == 0
    check_output(dest, source)
    data = json.loads(manifest.read_text())  # another manifest naming the same output does not replace it either
    data["name"] = "other"
    manifest.write_text(json.dumps(data))
    assert_refused(main(["fetch", str(manifest), "--dest", str(dest), "--force"]),
                   "fetch of manifest 'toy'")


def test_temporary_files_never_take_a_users_name(tmp_path, source):
    manifest = write_manifest(tmp_path, source, post=("decompress",), output="toy.fa")
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / "toy.fa.tmp").write_text("mine")  # the name the old code wrote its temporary file to
    fetch_manifest(manifest, dest, quiet=True)
    assert (dest / "toy.fa.tmp").read_text() == "mine"
    assert decode(open_fasta(dest / "toy.fa", quiet=True).fetch("chr1", 0, 60)) == source["sequence"][:60]


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
@pytest.mark.parametrize("post, output", [(("decompress",), "toy.fa"), (("bgzip",), "toy.fa.bgz")])
def test_a_damaged_unverified_gzip_is_a_clear_error(tmp_path, source, assert_refused, damage, post, output):
    good = source["fasta"].read_bytes()
    source["fasta"].write_bytes(good[: len(good) // 2] if damage == "truncated"
                                else good[:20] + bytes(4000) + good[4020:])
    manifest = write_manifest(tmp_path, source, sha_fasta=None, post=post, output=output)
    dest = tmp_path / "data"
    assert_refused(main(["fetch", str(manifest), "--dest", str(dest)]), source["fasta"].as_uri(),
                   "not a complete gzip file")
    # no output, no stamp, no temporary file, and the damaged download is not kept to be reused
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == [".downloads", ".fetch"]
    source["fasta"].write_bytes(good)  # the publisher fixes the file: the next fetch downloads it afresh
    assert main(["fetch", str(manifest), "--dest", str(dest)]) == 0
    fasta = open_fasta(dest / output, decompress_to=tmp_path / "cache", quiet=True)
    assert decode(fasta.fetch("chr1", 300_000, 300_500)) == source["sequence"][300_000:300_500]


def test_a_transfer_that_ends_early_is_resumed_not_accepted(tmp_path, source, monkeypatch, capsys):
    manifest = write_manifest(tmp_path, source, sha_fasta=None)  # nothing else would notice the missing bytes
    real_open = download_module._open
    good = source["fasta"].read_bytes()
    offsets = []

    def cut_short(url, offset):  # the server announces the whole file, the connection ends half-way
        stream, total, resumed = real_open(url, offset)
        offsets.append(offset)
        if url.endswith(".gz") and offset == 0:
            stream = io.BytesIO(stream.read(len(good) // 2))
        return stream, total, resumed

    monkeypatch.setattr(download_module, "_open", cut_short)
    fetch_manifest(manifest, tmp_path / "data", only=["toy"])
    assert offsets == [0, len(good) // 2] and "ended after" in capsys.readouterr().out
    fasta = open_fasta(tmp_path / "data" / "toy.fa.bgz", quiet=True)
    assert decode(fasta.fetch("chr1", 399_940, 400_000)) == source["sequence"][-60:]


def test_a_transfer_that_keeps_ending_early_is_an_error_and_resumable(tmp_path, source, monkeypatch):
    manifest = write_manifest(tmp_path, source, sha_fasta=None)
    real_open = download_module._open

    def always_short(url, offset):
        stream, total, resumed = real_open(url, offset)
        return io.BytesIO(stream.read(1000)), total, resumed

    monkeypatch.setattr(download_module, "_open", always_short)
    with pytest.raises(CorruptFileError, match=r"genome.fa.gz: the transfer ended after 2000 of .* resume"):
        fetch_manifest(manifest, tmp_path / "data", quiet=True)
    assert (tmp_path / "data" / ".downloads" / "genome.fa.gz.part").stat().st_size == 2000
    assert not (tmp_path / "data" / "toy.fa.bgz").exists()
