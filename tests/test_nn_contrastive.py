"""msa_fast.nn contrastive-loss modules: each equals its functional op, forwards every option, shows
them in its repr, keeps the op's defaults, and compiles with fullgraph=True."""

from __future__ import annotations

import inspect

import pytest
import torch

import msa_fast.nn as mnn
import msa_fast.ops as ops
from msa_fast.nn import contrastive as contrastive_module

B, D = 9, 6


def _features(n=B, count=1):
    return [torch.randn(n, D, requires_grad=True) for _ in range(count)]


def _labels_int():
    return torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1])


def _labels_float():
    return torch.tensor([-3.0, -1.2, 0.0, 0.4, 1.0, 2.5, -0.5, 3.0, 1.6])


# module class, functional op, function building inputs, non-default options
CASES = {
    "supcon": (mnn.SupConLoss, ops.supcon_loss, lambda: (*_features(), _labels_int()),
               dict(temperature=0.2, variant="in", reduction="mean_pos", normalize=False, backend="reference")),
    "info_nce": (mnn.InfoNCE, ops.info_nce, lambda: tuple(_features(count=2)),
                 dict(temperature=0.3, negatives="keys", normalize=False, reduction="sum", backend="reference")),
    "hycon": (mnn.HyConLoss, ops.hycon_loss, lambda: (*_features(count=3), _labels_float()),
              dict(alpha=0.5, use_log=True, sim_transform="exp_tau", tau=0.2, den_guard="clamp", reduction="sum",
                   drop_zero=True, backend="reference")),
    "mgcl": (mnn.MGCLContrastiveLoss, ops.mgcl_contrastive_loss,
             lambda: (tuple(_features(count=3)), tuple(_features(count=3)), _labels_float()),
             dict(delta=0.3, tau=0.1, label_scale=1.0, pos_weight="clgsi", neg_weight="none", gain=1.0,
                  reduction="none", same_sample_c2="ordered6", backend="reference")),
    "align": (mnn.AlignLoss, ops.align_loss, lambda: tuple(_features(count=2)),
              dict(power=1.5, normalize=True, reduction="none", backend="reference")),
    "uniform": (mnn.UniformLoss, ops.uniform_loss, lambda: tuple(_features(count=2)),
                dict(kappa=3.0, mode="wang_isola", normalize=True, backend="reference")),
}


def _leaves(inputs):
    out = []
    for x in inputs:
        if isinstance(x, tuple):
            out += _leaves(x)
        elif x.requires_grad:
            out.append(x)
    return out


def _scalar(result):
    parts = result if isinstance(result, tuple) else (result,)
    return sum(p.sum() * (i + 1) for i, p in enumerate(parts))


@pytest.mark.parametrize("options", ["defaults", "custom"])
@pytest.mark.parametrize("name", list(CASES))
def test_module_equals_functional(name, options):
    cls, fn, make, custom = CASES[name]
    opts = custom if options == "custom" else {}
    inputs = make()
    module_out = cls(**opts)(*inputs)
    module_grads = torch.autograd.grad(_scalar(module_out), _leaves(inputs))
    fn_out = fn(*inputs, **opts)
    fn_grads = torch.autograd.grad(_scalar(fn_out), _leaves(inputs))
    for a, b in zip(module_out if isinstance(module_out, tuple) else (module_out,),
                    fn_out if isinstance(fn_out, tuple) else (fn_out,)):
        assert torch.equal(a, b)
    for a, b in zip(module_grads, fn_grads):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", list(CASES))
def test_options_pass_through(name, monkeypatch):
    cls, fn, make, custom = CASES[name]
    seen = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return fn(*args, **kwargs)

    monkeypatch.setattr(contrastive_module, fn.__name__, spy)
    module = cls(**custom, check_finite=True, global_batch=True)
    module(*make())
    assert seen == {**module._options()} and set(seen) == set(cls._OPTIONS)
    for key, value in custom.items():
        assert seen[key] == value and getattr(module, key) == value
    assert seen["check_finite"] is True and seen["global_batch"] is True
    # an attribute changed after construction is what the next call uses
    module.backend = "cpp"
    module(*make())
    assert seen["backend"] == "cpp"


@pytest.mark.parametrize("name", list(CASES))
def test_defaults_match_the_functional_op(name):
    cls, fn, _, _ = CASES[name]
    module_params = inspect.signature(cls.__init__).parameters
    fn_params = inspect.signature(fn).parameters
    for option in cls._OPTIONS:
        assert module_params[option].default == fn_params[option].default, option


@pytest.mark.parametrize("name", list(CASES))
def test_repr_shows_the_options(name):
    cls, _, _, custom = CASES[name]
    module = cls(**custom)
    text = repr(module)
    assert text.startswith(cls.__name__ + "(")
    for key, value in custom.items():
        assert f"{key}={value!r}" in text
    assert "backend='reference'" in text and "global_batch=False" in text
    assert list(module.parameters()) == [] and module.state_dict() == {}


def test_invalid_option_raises_the_op_error():
    z, labels = _features()[0], _labels_int()
    with pytest.raises(ValueError, match="msa_fast.ops.supcon_loss: variant"):
        mnn.SupConLoss(variant="bad")(z, labels)


@pytest.mark.parametrize("global_batch", [False, True])
def test_supcon_module_compiles_fullgraph(global_batch):
    # global_batch=True without a process group is a no-op and still traces as one graph
    torch._dynamo.reset()
    module = mnn.SupConLoss(0.1, global_batch=global_batch)
    z, labels = _features()[0], _labels_int()
    compiled = torch.compile(module, fullgraph=True)
    out = compiled(z, labels)
    (grad,) = torch.autograd.grad(out, z)
    ref = module(z, labels)
    (ref_grad,) = torch.autograd.grad(ref, z)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-5)
