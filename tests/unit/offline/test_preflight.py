"""Malformed checkpoints fail before the engine starts, with one message naming the file and the fix."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from engine.offline.preflight import preflight
from engine.offline.tiny import TinySpec, make_tiny
from engine.shared.vocab import CheckpointError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny"), TinySpec(grid=4, codebook_size=64))


@pytest.fixture
def copy(tiny, tmp_path):
    return shutil.copytree(tiny, tmp_path / "m")


def edit_config(model_dir, **changes) -> None:
    path = model_dir / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def refused(model_dir, vqgan=None) -> str:
    with pytest.raises(CheckpointError) as info:
        preflight(model_dir, vqgan)
    return str(info.value)


def test_a_good_checkpoint_and_its_decoder(tiny, copy):
    assert preflight(tiny, None) == tiny / "vqgan.ckpt"
    (copy / "vqgan.ckpt").unlink()
    assert preflight(copy, None) is None  # served without image output


def test_not_a_checkpoint(tmp_path):
    assert "config.json not found" in refused(tmp_path)


def test_architectures(copy):
    edit_config(copy, architectures=["LlamaForCausalLM"])
    assert "is not a Chameleon checkpoint" in refused(copy)
    assert "ChameleonXLLMXForConditionalGeneration (Lumina-mGPT)" in refused(copy)


def test_lumina_checkpoint_and_one_without_its_span_tokens(tmp_path):
    lumina = make_tiny(tmp_path / "lumina", TinySpec(grid=4, codebook_size=64, family="lumina"))
    assert preflight(lumina, None) == lumina / "vqgan.ckpt"
    config = json.loads((lumina / "config.json").read_text())
    assert config["architectures"] == ["ChameleonXLLMXForConditionalGeneration"] and config["z_loss_weight"] > 0
    vocab = {k: v for k, v in config["vocabulary_map"].items() if k != "<reserved08799>"}
    edit_config(lumina, vocabulary_map=vocab)
    assert refused(lumina).startswith(f"{lumina / 'config.json'}: a Lumina-mGPT vocabulary_map needs its "
                                      "end-of-line token <reserved08799>")


@pytest.fixture(scope="module")
def emu3(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("emu3"), TinySpec(grid=4, codebook_size=64, family="emu3"))


def test_emu3_folder_and_what_can_be_wrong_with_one(emu3, tmp_path):
    assert preflight(emu3, None) == emu3  # its VQ decoder is in the weights
    assert "leave --vqgan out" in refused(emu3, vqgan=emu3 / "vqgan.ckpt")
    bad = shutil.copytree(emu3, tmp_path / "e")
    config = json.loads((bad / "config.json").read_text())
    vocab = {k: v for k, v in config["vocabulary_map"].items() if k != "<|extra_201|>"}
    edit_config(bad, vocabulary_map=vocab)
    assert refused(bad).startswith(f"{bad / 'config.json'}: an Emu3 vocabulary_map needs ['<|extra_201|>']")
    edit_config(bad, vocabulary_map=config["vocabulary_map"], vq_config={**config["vq_config"], "codebook_size": 32})
    assert "vq_config has 32 codes but vocabulary_map has 64 visual tokens" in refused(bad)
    edit_config(bad, vq_config=config["vq_config"], text_config=None)
    assert refused(bad) == f"{bad / 'config.json'}: no text_config: an Emu3 checkpoint nests its text model's config"
    edit_config(bad, text_config=config["text_config"])
    (bad / "preprocessor_config.json").unlink()
    assert "no image-processor settings" in refused(bad)
    shutil.copy(emu3 / "preprocessor_config.json", bad / "preprocessor_config.json")
    edit_config(bad, vq_config={**config["vq_config"], "channel_multiplier": [1, 2, 4]})
    assert "spatial_factor 8 but the VQ model downsamples by 4" in refused(bad)


def test_missing_vocabulary_map(copy):
    edit_config(copy, vocabulary_map=None)
    assert "config.json has no vocabulary_map" in refused(copy)


def test_codebook_of_the_model_and_its_tokenizer_differ(copy):
    config = json.loads((copy / "config.json").read_text())
    edit_config(copy, vq_config={**config["vq_config"], "num_embeddings": 128})
    assert "vq_config has 128 codes but vocabulary_map has 64 image tokens" in refused(copy)


def test_decoder_of_another_model(copy, tmp_path):
    other = make_tiny(tmp_path / "other", TinySpec(grid=4, codebook_size=128))
    assert "the VQGAN has 128 codes, the model 64" in refused(copy, other / "vqgan.ckpt")
    assert "does not exist: pass --vqgan" in refused(copy, tmp_path / "none" / "vqgan.ckpt")
    (copy / "vqgan.yaml").unlink()
    assert "vqgan.yaml not found" in refused(copy)


def test_the_server_command_says_it_in_one_line(copy):
    edit_config(copy, vocabulary_map=None)
    done = subprocess.run([sys.executable, "-m", "server.cli", "--model", str(copy)], capture_output=True, text=True,
                          check=False, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"chameleon-serve: error: {copy / 'config.json'} has no vocabulary_map: "
        "convert the checkpoint to the Hugging Face layout")
