"""The RLHF asset cache heals itself: every stage carries a sha256 manifest; a damaged stage is
rebuilt (one line says why) and swapped in atomically; what cannot be rebuilt or loaded is a
CacheError naming the file. Micro sizes only (a build takes seconds)."""
import json
import shutil

import pytest

from ppo_edu.rlhf import pipeline


def _load(cache):
    return pipeline.load_assets("micro", 0, "rm", progress_bar=False, device="cpu", cache_dir=cache)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A micro cache built once; each test damages its own copy."""
    cache = tmp_path_factory.mktemp("rlhf-cache")
    a = _load(cache)
    return cache, a.path.name, a.info["rm"]["heldout_accuracy"]


@pytest.fixture
def cache(built, tmp_path):
    root, _, _ = built
    shutil.copytree(root, tmp_path / "cache")
    return tmp_path / "cache"


def _stages(cache, built):
    lm = cache / built[1]
    return lm, lm.with_name(lm.name + "-rm")


def test_a_built_stage_records_a_manifest_that_verifies(cache, built):
    lm, rm = _stages(cache, built)
    manifest = json.loads((lm / "manifest.json").read_text())
    assert {"lm.json", "prompts.json", "policy/model.safetensors", "tokenizer/tokenizer.json"} <= set(manifest["files"])
    assert pipeline.verify_stage(lm, "lm.json") is None
    lm_sha = pipeline._sha256(lm / "manifest.json")
    assert pipeline.verify_stage(rm, "rm.json", built_from=lm_sha) is None
    assert "different language-model" in pipeline.verify_stage(rm, "rm.json", built_from="0" * 64)


@pytest.mark.parametrize("damage,reason", [
    (lambda lm: (lm / "lm.json").unlink(), "lm.json is missing"),
    (lambda lm: (lm / "policy" / "model.safetensors").write_bytes(
        (lm / "policy" / "model.safetensors").read_bytes()[:1000]), "policy/model.safetensors has 1000 bytes"),
    (lambda lm: (lm / "tokenizer" / "tokenizer.json").write_text("garbage"), "tokenizer/tokenizer.json has"),
    (lambda lm: (lm / "prompts.json").write_text("[" + " " * ((lm / "prompts.json").stat().st_size - 1)),
     "prompts.json has changed since it was built"),
    (lambda lm: (lm / "manifest.json").unlink(), "has no manifest.json"),
])
def test_damage_is_named(cache, built, damage, reason):
    lm, _ = _stages(cache, built)
    damage(lm)
    assert reason in pipeline.verify_stage(lm, "lm.json")


def test_zeroed_reward_model_is_rebuilt_with_one_line(cache, built, capsys):
    _, rm = _stages(cache, built)
    weights = rm / "reward_model" / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(bytes(len(original)))  # zeroed in place: same size
    a = _load(cache)
    err = [line for line in capsys.readouterr().err.splitlines() if "rlhf cache" in line]
    assert len(err) == 1 and "reward_model/model.safetensors has changed" in err[0] and "rebuilding" in err[0]
    assert weights.read_bytes() == original  # the build is deterministic
    assert a.info["rm"]["heldout_accuracy"] == built[2]
    assert sorted(p.name for p in cache.iterdir()) == sorted(_stages(cache, built)[i].name for i in (0, 1))


def test_a_damaged_language_model_rebuilds_both_stages(cache, built, capsys):
    lm, rm = _stages(cache, built)
    (lm / "lm.json").unlink()
    a = _load(cache)
    err = capsys.readouterr().err
    assert "lm.json is missing; rebuilding it" in err
    assert "was built from a different language-model stage; rebuilding it" in err
    assert a.info["rm"]["heldout_accuracy"] == built[2]
    lm_sha = pipeline._sha256(lm / "manifest.json")
    assert pipeline.verify_stage(lm, "lm.json") is None and pipeline.verify_stage(rm, "rm.json", lm_sha) is None
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_a_stage_that_cannot_be_rebuilt_is_a_clear_error(cache, built, monkeypatch):
    lm, _ = _stages(cache, built)
    (lm / "prompts.json").write_text("not json")

    def unwritable(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(cache))

    monkeypatch.setattr(pipeline, "_atomic_dir", unwritable)
    with pytest.raises(pipeline.CacheError, match=f"cannot build {lm}: .*Permission denied"):
        _load(cache)


def test_a_file_that_passes_its_manifest_but_cannot_load_names_the_file(cache, built):
    lm, _ = _stages(cache, built)
    (lm / "prompts.json").write_text("not json")
    manifest = json.loads((lm / "manifest.json").read_text())  # a consistent but broken stage
    manifest["files"]["prompts.json"] = {"sha256": pipeline._sha256(lm / "prompts.json"),
                                         "size": (lm / "prompts.json").stat().st_size}
    (lm / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(pipeline.CacheError, match="cannot load .*prompts.json: JSONDecodeError"):
        _load(cache)


def test_cli_reports_a_cache_error_in_one_line(tmp_path, capsys, monkeypatch):
    from ppo_edu.cli import main

    def broken(*args, **kwargs):
        raise pipeline.CacheError("rlhf cache: cannot load /x/prompts.json: JSONDecodeError: bad")

    monkeypatch.setattr(pipeline, "load_assets", broken)
    assert main(["rlhf", "--preset", "micro", "--out", str(tmp_path / "run"), "--device", "cpu",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "prompts.json" in err and "Traceback" not in err
