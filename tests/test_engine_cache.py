"""Paddle's default --weights engine (Paddle Inference through paddle_impl.engine_cache) and bf16 folding.

The cache is a folder a later run reads: every test that crafts an entry checks that it is
refused (one note line) and rebuilt, never run. One FarSeg with paddle.seed(0) weights is
exported once per module; tampered entries are copies of it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import List, Tuple

import numpy as np
import paddle
import pytest
from PIL import Image

import paddle_impl.engine_cache as engine_cache
import paddle_impl.evaluate as paddle_evaluate
from common.digest import sha256_file
from isaid.synth import make_scene
from paddle_impl import build_model

MODEL = "farseg"


@pytest.fixture(scope="module")
def farseg(tmp_path_factory: pytest.TempPathFactory) -> Tuple[paddle.nn.Layer, Path]:
    paddle.set_device("cpu")
    paddle.seed(0)
    model = build_model(MODEL)
    model.eval()
    weights = tmp_path_factory.mktemp("weights") / "farseg.pdparams"
    paddle.save(model.state_dict(), str(weights))
    return model, weights


def _open(model, weights: Path, cache: Path, amp=None) -> Tuple[str, List[str]]:
    """Open the engine; return (cache state word from the description, notes printed)."""
    notes: List[str] = []
    deployed, description = engine_cache.open_inference_engine(
        model, MODEL, str(weights), "test", amp, str(cache), threads=1, note=notes.append
    )
    state = description.split("engine cache ")[1].split(",")[0]
    x = np.zeros((1, 3, 64, 64), dtype=np.float32)
    assert deployed(x).shape == (1, 16, 64, 64)
    return state, notes


def _entries(cache: Path) -> List[Path]:
    return sorted(p for p in cache.iterdir() if p.is_dir() and not p.name.startswith("."))


@pytest.fixture(scope="module")
def built_entry(farseg, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, weights = farseg
    cache = tmp_path_factory.mktemp("cache")
    assert _open(model, weights, cache)[0] == "miss"
    (entry,) = _entries(cache)
    return entry


def _cache_with_copy(built_entry: Path, tmp_path: Path) -> Tuple[Path, Path]:
    cache = tmp_path / "cache"
    entry = cache / built_entry.name
    shutil.copytree(built_entry, entry)
    return cache, entry


def _rewrite_manifest(entry: Path, name: str) -> None:
    """Record ``name``'s current size and sha256 in the manifest, as an attacker would."""
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["files"][name] = {"bytes": (entry / name).stat().st_size, "sha256": sha256_file(str(entry / name))}
    (entry / "manifest.json").write_text(json.dumps(manifest))


def test_hit_then_miss_when_the_weights_or_the_program_change(farseg, built_entry, tmp_path, monkeypatch) -> None:
    model, weights = farseg
    cache, entry = _cache_with_copy(built_entry, tmp_path)
    assert _open(model, weights, cache) == ("hit", [])
    # Other weights (one value changed): another key, a new entry.
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    first = next(iter(state))
    changed = {k: paddle.to_tensor(v + 1e-3 if k == first else v) for k, v in state.items()}
    other_weights = tmp_path / "other.pdparams"
    paddle.save(changed, str(other_weights))
    model.set_state_dict(changed)
    try:
        assert _open(model, other_weights, cache)[0] == "miss"
    finally:
        model.set_state_dict(state)
    assert len(_entries(cache)) == 2
    # Another program (the code that writes it changed): another key.
    monkeypatch.setattr(engine_cache, "program_code_hash", lambda: "0" * 64)
    assert _open(model, weights, cache)[0] == "miss"
    assert len(_entries(cache)) == 3


def test_a_run_reads_each_file_once_and_runs_the_predictor_once(farseg, tmp_path, monkeypatch) -> None:
    """The cold path's redundant work stays cut (issue 21): on a miss the weights and each written
    file are hashed once (key + model.yml; manifest, not again for the staging check), on a hit
    each file once; the predictor runs once at open (the probe against the dynamic graph)."""
    import app.exported
    from paddle_impl.infer import DeployedModel

    model, weights = farseg
    hashed: List[str] = []
    runs: List[Tuple[int, ...]] = []

    def counting_sha256(path: str) -> str:
        hashed.append(os.path.basename(path))
        return sha256_file(path)

    original_run = DeployedModel._run

    def counting_run(self, x):
        runs.append(x.shape)
        return original_run(self, x)

    monkeypatch.setattr(engine_cache, "sha256_file", counting_sha256)
    monkeypatch.setattr(app.exported, "sha256_file", counting_sha256)
    monkeypatch.setattr(DeployedModel, "_run", counting_run)
    cache = tmp_path / "cache"
    for expected_state in ("miss", "hit"):
        hashed.clear()
        runs.clear()
        deployed, description = engine_cache.open_inference_engine(
            model, MODEL, str(weights), "test", None, str(cache), threads=1, note=lambda text: None
        )
        assert f"engine cache {expected_state}" in description
        assert sorted(hashed) == sorted([weights.name, *engine_cache.ENTRY_FILES]), hashed
        assert runs == [engine_cache.PROBE_SHAPE], runs


def test_program_code_hash_follows_the_model_sources(tmp_path) -> None:
    package = Path(engine_cache.__file__).parent
    for name in engine_cache.PROGRAM_SOURCES:
        shutil.copy(package / name, tmp_path / name)
    before = engine_cache.program_code_hash(folder=str(tmp_path))
    assert before == engine_cache.program_code_hash()
    with open(tmp_path / "fpn.py", "a") as handle:
        handle.write("\n# changed\n")
    assert engine_cache.program_code_hash(folder=str(tmp_path)) != before


@pytest.mark.parametrize(
    "tamper, reason",
    [
        ("params_bytes", "sha256 differs"),
        ("foreign_op", "export never writes"),
        ("wrong_weights_sha", "weights_sha256 is not this run's"),
        ("extra_file", "holds"),
        ("link", "not a regular file"),
        ("consistent_other_params", "probe differs"),
        ("truncated_consistent_params", "not a Paddle parameter file"),
    ],
)
def test_crafted_entry_is_refused_in_one_line_and_rebuilt(farseg, built_entry, tmp_path, tamper, reason) -> None:
    model, weights = farseg
    cache, entry = _cache_with_copy(built_entry, tmp_path)
    params = entry / "model.pdiparams"
    if tamper == "params_bytes":
        data = bytearray(params.read_bytes())
        data[len(data) // 2] ^= 0xFF
        params.write_bytes(bytes(data))
    elif tamper == "foreign_op":
        program = json.loads((entry / "model.json").read_text())
        ops = program["program"]["regions"][0]["blocks"][0]["ops"]
        relu = next(op for op in ops if op["#"] == "1.relu")
        relu["#"] = "1.save"  # an op that writes files
        (entry / "model.json").write_text(json.dumps(program))
        _rewrite_manifest(entry, "model.json")
    elif tamper == "wrong_weights_sha":
        manifest = json.loads((entry / "manifest.json").read_text())
        manifest["weights_sha256"] = "f" * 64
        (entry / "manifest.json").write_text(json.dumps(manifest))
    elif tamper == "extra_file":
        (entry / "run.sh").write_text("echo hi\n")
    elif tamper == "link":
        target = tmp_path / "elsewhere.pdiparams"
        shutil.move(str(params), target)
        os.symlink(target, params)
    elif tamper == "consistent_other_params":
        # Other weights of the same shapes, with a manifest that matches them: only the probe
        # against the dynamic graph can tell.
        from paddle_impl.export import save_inference_model

        state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
        other = {k: np.asarray(v * 1.01, dtype=v.dtype) for k, v in state.items()}
        model.set_state_dict(other)
        scratch = tmp_path / "scratch"
        scratch.mkdir()
        try:
            save_inference_model(model, str(scratch))
        finally:
            model.set_state_dict(state)
        shutil.copy(scratch / "model.pdiparams", params)
        _rewrite_manifest(entry, "model.pdiparams")
    elif tamper == "truncated_consistent_params":
        params.write_bytes(params.read_bytes()[:1000])
        _rewrite_manifest(entry, "model.pdiparams")
    state, notes = _open(model, weights, cache)
    assert state == "rebuilt"
    assert len(notes) == 1 and "\n" not in notes[0] and reason in notes[0], notes
    if tamper == "params_bytes":  # the rebuilt entry is a good one: the next run hits it
        assert _open(model, weights, cache) == ("hit", [])


def test_cache_size_bound_evicts_least_recently_used(tmp_path) -> None:
    cache = tmp_path / "cache"
    for age, name in enumerate(("a" * 32, "b" * 32, "c" * 32)):
        entry = cache / name
        entry.mkdir(parents=True)
        (entry / "model.pdiparams").write_bytes(b"x" * 1000)
        (entry / "manifest.json").write_text("{}")
        os.utime(entry / "manifest.json", (1000 + age, 1000 + age))
    (cache / "not-an-entry").mkdir()  # never touched
    removed = engine_cache.evict(str(cache), 2100, keep=("a" * 32,))
    # 3 x 1002 bytes > 2100: the oldest entry not in use ("b") goes; "a" is in use and kept.
    assert removed == ["b" * 32]
    assert sorted(p.name for p in cache.iterdir()) == ["a" * 32, "c" * 32, "not-an-entry"]
    assert engine_cache.evict(str(cache), 0, keep=("a" * 32,)) == ["c" * 32, "a" * 32]


def test_an_entry_larger_than_the_bound_is_not_kept(farseg, tmp_path, monkeypatch) -> None:
    model, weights = farseg
    monkeypatch.setenv(engine_cache.CACHE_MB_ENV, "1")
    assert _open(model, weights, tmp_path / "cache")[0] == "miss"
    assert _entries(tmp_path / "cache") == []


def test_default_engine_is_inference_and_dygraph_keeps_the_old_path(farseg, tmp_path) -> None:
    _, weights = farseg
    rgb, labels = make_scene(np.random.default_rng(3), 96, 128)
    for folder, array in (("images", rgb), ("labels", labels)):
        (tmp_path / folder).mkdir()
        Image.fromarray(array).save(tmp_path / folder / "S1.png")
    results = {}
    for engine in ("default", "dygraph"):
        out = tmp_path / f"{engine}.json"
        argv = ["--model", MODEL, "--weights", str(weights), "--images", str(tmp_path / "images")]
        argv += ["--masks", str(tmp_path / "labels"), "--window", "64", "--stride", "32", "--device", "cpu"]
        argv += ["--no-progress", "--json", str(out), "--engine-cache", str(tmp_path / "cache")]
        argv += [] if engine == "default" else ["--engine", "dygraph"]
        assert paddle_evaluate.main(argv) == 0
        results[engine] = json.loads(out.read_text())
    assert "Paddle Inference oneDNN float32" in results["default"]["weights"]["loaded_as"]
    assert results["default"]["run"]["engine"] == "auto"
    assert "dynamic graph" in results["dygraph"]["weights"]["loaded_as"]
    assert len(_entries(tmp_path / "cache")) == 1
    # Same classes up to float32 rounding (BatchNorm folded by oneDNN).
    default, dygraph = (np.array(results[k]["confusion"]) for k in ("default", "dygraph"))
    assert default.sum() == dygraph.sum() == 96 * 128
    assert np.abs(default - dygraph).sum() <= 2 * 0.001 * default.sum()


def test_engine_option_with_model_dir_is_one_line(tmp_path, capsys) -> None:
    argv = ["--model", MODEL, "--model-dir", str(tmp_path), "--images", str(tmp_path), "--masks", str(tmp_path)]
    assert paddle_evaluate.main(argv + ["--engine", "dygraph"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--engine" in err[0]


def test_exact_batch_norm_folding_rounds_once_and_matches_float32_folding() -> None:
    """Folding in float64 gives each folded weight its correctly rounded float32 value, which
    torch's float32 fold (rounded at every step) misses for some; both agree within rounding."""
    import torch

    import torch_ref
    import torch_ref.sliding_window as torch_inference
    from tests.model_helpers import randomise_batchnorm

    torch.manual_seed(0)
    model = torch_ref.build_model("farseg")
    randomise_batchnorm(model, seed=4)
    model.eval()
    conv, bn = model.en.resnet.layer1[0].conv1, model.en.resnet.layer1[0].bn1
    exact = torch_inference.fold_conv_bn(conv, bn)
    careless = torch_inference.fold_conv_bn(conv, bn, exact=False)
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    rounded_once = (conv.weight.double() * scale.reshape(-1, 1, 1, 1)).float()
    assert torch.equal(exact.weight, rounded_once)
    assert not torch.equal(careless.weight, rounded_once)  # the float32 fold rounds twice
    assert torch.allclose(exact.weight, careless.weight, rtol=4e-7, atol=0)  # within float32 rounding
    assert torch.allclose(exact.bias, careless.bias, rtol=1e-6, atol=1e-6)
    folded, count = torch_inference.fold_batch_norms(model)
    float32_folded, _ = torch_inference.fold_batch_norms(model, exact=False)
    assert count == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        reference = model.double()(x.double())
        for candidate in (folded, float32_folded):
            assert (candidate(x).double() - reference).abs().max() <= 1e-4


def test_bf16_weights_cast_once_give_the_same_probabilities() -> None:
    """The precast of the bf16 CPU path (weights stored in bf16 once) changes no output value;
    a planted precast that also rounds the inputs would be caught."""
    import torch

    import torch_ref
    import torch_ref.sliding_window as torch_inference

    torch.manual_seed(0)
    model = torch_ref.build_model("farseg").eval()
    image = np.random.default_rng(0).integers(0, 256, (1, 64, 96, 3), dtype=np.uint8)
    plain = torch_inference.SlidingWindowInference(model, 64, 32, amp="bf16", precast=False)
    cast = torch_inference.SlidingWindowInference(model, 64, 32, amp="bf16")
    assert cast.precast and not plain.precast
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is untouched
    x = plain.prepare(image)
    assert torch.equal(plain.forward(x), cast.forward(x))
    assert not torch.equal(plain.forward(x), cast.forward(x.to(torch.float16).to(torch.float32)))
