import json

import pytest

from msa_fast.train.configs import ENGINE_DEFAULTS, apply_overrides, parse_value, resolve_config


def test_parse_value_types():
    assert parse_value("3") == 3 and isinstance(parse_value("3"), int)
    assert parse_value("1e-4") == 1e-4
    assert parse_value("true") is True and parse_value("False") is False
    assert parse_value("none") is None and parse_value("null") is None
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value('{"a": 1}') == {"a": 1}
    assert parse_value("concat") == "concat"


def test_overrides_typed_and_nested():
    base = {"lr": 1e-3, "epochs": None, "patience": 3, "compile": True, "hycon": {"fusion": "add", "alpha": 0.8},
            "mgcl.tau": 0.03, "seeds": [1, 2]}
    out = apply_overrides(base, ["lr=1", "patience=5.0", "compile=false", "hycon.fusion=concat", "hycon.alpha=1",
                                 "mgcl.tau=0.07", "epochs=4", "seeds=7"])
    assert out["lr"] == 1.0 and isinstance(out["lr"], float)
    assert out["patience"] == 5 and isinstance(out["patience"], int)
    assert out["compile"] is False
    assert out["hycon"] == {"fusion": "concat", "alpha": 1.0}
    assert out["mgcl.tau"] == 0.07 and out["epochs"] == 4 and out["seeds"] == [7]
    assert base["hycon"]["fusion"] == "add"  # not modified in place


@pytest.mark.parametrize("item,match", [("patience=abc", "integer"), ("compile=1", "boolean"),
                                        ("patience=2.5", "integer"), ("lr=fast", "number")])
def test_override_type_errors(item, match):
    with pytest.raises(ValueError, match=match):
        apply_overrides({"patience": 3, "compile": True, "lr": 1e-3}, [item])


def test_unknown_key_lists_close_matches():
    with pytest.raises(ValueError, match=r"unknown config key 'learning_rat'") as e:
        apply_overrides(dict(ENGINE_DEFAULTS), ["learning_rat=1"])
    with pytest.raises(ValueError, match=r"'pateince'.*did you mean: patience"):
        apply_overrides(dict(ENGINE_DEFAULTS), ["pateince=1"])
    with pytest.raises(ValueError, match=r"hycon\.fusoin.*hycon\.fusion"):
        apply_overrides({"hycon": {"fusion": "add"}}, ["hycon.fusoin=concat"])
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides({}, ["lr"])
    del e


def test_resolve_layers(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"lr": 0.5, "patience": 2}))
    cfg = resolve_config(model_cfg={"lr": 1e-5, "hycon": {"alpha": 0.8}}, config_file=str(f),
                         extra={"epochs": 3, "batch_size": None}, overrides=["patience=4"])
    assert cfg["lr"] == 0.5 and cfg["patience"] == 4 and cfg["epochs"] == 3 and cfg["batch_size"] == 32
    assert cfg["hycon"] == {"alpha": 0.8}
    json.dumps(cfg)  # serialisable


def test_unknown_model_is_a_clear_error():
    from msa_fast.train.configs import _registry

    if _registry() is not None:
        with pytest.raises(ValueError, match="unknown model 'hycn'.*did you mean hycon"):
            resolve_config("hycn")
    else:
        with pytest.raises(ValueError, match=r"unknown model 'hycon'.*registry"):
            resolve_config("hycon")


def test_registry_defaults_are_layered():
    from msa_fast.train.configs import _registry

    if _registry() is None:
        pytest.skip("model registry not installed")
    cfg = resolve_config("hycon", "mosi", overrides=["fusion=concat", "patience=3"])
    assert cfg["fusion"] == "concat" and cfg["lr"] == 1e-5 and cfg["patience"] == 3 and cfg["grad_accum"] == 1
    with pytest.raises(ValueError, match="'fusoin'.*fusion"):
        resolve_config("hycon", "mosi", overrides=["fusoin=concat"])
