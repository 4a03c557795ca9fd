"""Checkpoint folders are reused only under the same fingerprint; otherwise emptied, and said out loud."""

import json
import logging

import pytest

from safeclip.checkpoint import FINGERPRINT, file_digest, fingerprint, prepare_checkpoint_dir

LOG = logging.getLogger("test.checkpoint")


def test_fingerprint_is_stable_and_sensitive():
    assert fingerprint("visu", {"a": 1, "b": 2}) == fingerprint("visu", {"b": 2, "a": 1})
    assert fingerprint("visu", {"a": 1}) != fingerprint("visu", {"a": 2})
    assert fingerprint("visu", {"a": 1}) != fingerprint("dpo", {"a": 1})


def test_file_digest_sees_names_and_bytes(tmp_path):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "x.bin").write_bytes(b"abc")
    first = file_digest(d)
    assert file_digest(d) == first
    (d / "sub" / "x.bin").write_bytes(b"abd")
    assert file_digest(d) != first
    (d / "sub" / "x.bin").write_bytes(b"abc")
    (d / "sub" / "x.bin").rename(d / "sub" / "y.bin")
    assert file_digest(d) != first


def test_fresh_folder_is_created_with_its_fingerprint(tmp_path, caplog):
    ckpt = tmp_path / "ckpt"
    with caplog.at_level(logging.WARNING):
        assert prepare_checkpoint_dir(ckpt, "fp1", LOG) is False
    assert json.loads((ckpt / FINGERPRINT).read_text()) == {"fingerprint": "fp1"}
    assert not caplog.records  # nothing to warn about


def test_same_fingerprint_resumes_and_keeps_files(tmp_path, caplog):
    ckpt = tmp_path / "ckpt"
    prepare_checkpoint_dir(ckpt, "fp1", LOG)
    (ckpt / "shards").mkdir()
    (ckpt / "shards" / "train-00000.parquet").write_bytes(b"x")
    with caplog.at_level(logging.WARNING):
        assert prepare_checkpoint_dir(ckpt, "fp1", LOG) is True
    assert (ckpt / "shards" / "train-00000.parquet").read_bytes() == b"x"
    assert not caplog.records


def test_different_fingerprint_empties_the_folder_and_warns(tmp_path, caplog):
    ckpt = tmp_path / "ckpt"
    prepare_checkpoint_dir(ckpt, "fp1", LOG)
    (ckpt / "shards").mkdir()
    (ckpt / "shards" / "train-00000.parquet").write_bytes(b"x")
    (ckpt / "checkpoint-10").mkdir()
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        assert prepare_checkpoint_dir(ckpt, "fp2", LOG) is False
    assert sorted(p.name for p in ckpt.iterdir()) == [FINGERPRINT]
    assert json.loads((ckpt / FINGERPRINT).read_text()) == {"fingerprint": "fp2"}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "different params" in warnings[0].getMessage()
    assert str(ckpt) in warnings[0].getMessage()
    # and now fp2 resumes
    assert prepare_checkpoint_dir(ckpt, "fp2", LOG) is True


def test_folder_without_fingerprint_is_emptied_and_warned_about(tmp_path, caplog):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "stray.bin").write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        assert prepare_checkpoint_dir(ckpt, "fp1", LOG) is False
    assert sorted(p.name for p in ckpt.iterdir()) == [FINGERPRINT]
    assert "no fingerprint" in caplog.text


def test_other_processes_never_touch_the_folder(tmp_path, caplog):
    ckpt = tmp_path / "ckpt"
    prepare_checkpoint_dir(ckpt, "fp1", LOG)
    (ckpt / "keep.bin").write_bytes(b"x")
    assert prepare_checkpoint_dir(ckpt, "fp2", LOG, is_main=False) is False
    assert (ckpt / "keep.bin").exists()
    assert json.loads((ckpt / FINGERPRINT).read_text()) == {"fingerprint": "fp1"}


@pytest.mark.parametrize("stored", ["", '{"fingerprint": "fp'])
def test_unreadable_fingerprint_starts_over(tmp_path, caplog, stored):
    """BUG: fingerprint.json is written with a plain (non-atomic) write_text, so a run killed while writing it
    leaves an empty or truncated file; the next run then crashes with a JSONDecodeError on every
    start instead of treating the folder as foreign and starting over, until someone deletes it by hand."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / FINGERPRINT).write_text(stored)
    (ckpt / "checkpoint-10").mkdir()
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        assert prepare_checkpoint_dir(ckpt, "fp1", LOG) is False
    assert json.loads((ckpt / FINGERPRINT).read_text()) == {"fingerprint": "fp1"}
    assert not (ckpt / "checkpoint-10").exists()
    assert caplog.records


def test_code_digest_follows_the_import_closure_only(tmp_path):
    from safeclip.checkpoint import code_digest

    for rel, text in {"safeclip/__init__.py": "", "safeclip/loop.py": "STEP = 1\n", "safeclip/other.py": "",
                      "stages/__init__.py": "", "stages/train.py": "from safeclip.loop import STEP\n"}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    before = code_digest("stages.train", tmp_path)
    (tmp_path / "safeclip/other.py").write_text("X = 2\n")  # not imported by the stage
    assert code_digest("stages.train", tmp_path) == before
    (tmp_path / "safeclip/loop.py").write_text("STEP = 2\n")  # the training loop changed
    assert code_digest("stages.train", tmp_path) != before


def test_fingerprint_of_a_stage_run_includes_its_code(monkeypatch):
    import types

    from safeclip import checkpoint

    checkpoint.running_code_digest.cache_clear()
    assert checkpoint.running_code_digest() == ""  # pytest is not a stage: parts only
    plain = checkpoint.fingerprint("x", 1)
    fake_main = types.SimpleNamespace(__spec__=types.SimpleNamespace(name="stages.base_llm"))
    monkeypatch.setitem(__import__("sys").modules, "__main__", fake_main)
    checkpoint.running_code_digest.cache_clear()
    try:
        assert checkpoint.running_code_digest() == checkpoint.code_digest("stages.base_llm")
        assert checkpoint.fingerprint("x", 1) != plain
    finally:
        checkpoint.running_code_digest.cache_clear()
