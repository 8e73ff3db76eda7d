"""Curvature products on the Llama decoder (jaxunlearn.methods.curvature, on jaxunlearn.secondorder).

The exact Hessian-vector product against central differences of the gradient, the
Gauss-Newton product against a NumPy ``Jᵀ H_out J v`` (output Hessian written out from the
softmax), its PSD-ness and symmetry, and both products with FSDP-sharded parameters on 8
simulated devices equal to the unsharded ones.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxunlearn import secondorder
from jaxunlearn.data.batch import Batch
from jaxunlearn.methods.curvature import answer_nll, curvature_product
from jaxunlearn.models import Llama
from jaxunlearn.models.presets import get_preset
from jaxunlearn.train import mesh as mesh_lib

VOCAB, B, T = 97, 4, 12


@pytest.fixture(scope="module")
def tiny():
    """The ``tiny`` preset (2 layers, width 64) and a batch with prompt, answer and padding."""
    model = Llama(get_preset("tiny", vocab_size=VOCAB), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, VOCAB, (B, T + 1)).astype(np.int32)
    mask = np.zeros((B, T), np.float32)
    mask[:, 4:] = 1.0  # answer tokens only
    mask[2, 9:] = 0.0
    att = np.ones((B, T), np.int32)
    att[2, 10:] = 0  # a shorter, right-padded row
    return graphdef, params, Batch(ids[:, :-1], ids[:, 1:], mask, att)


@pytest.fixture(scope="module")
def reference(tiny):
    """Unsharded products, computed once: the exact ``hvp`` and the Gauss-Newton product."""
    graphdef, params, batch = tiny
    f = answer_nll(graphdef)
    v = random_like(params, 1, unit=True)
    hv = jax.jit(lambda p, v: secondorder.hvp(lambda q: f(q, batch), p, v))(params, v)
    gn = jax.jit(curvature_product(graphdef, "gauss_newton"))
    return {"v": v, "hv": hv, "gn": gn, "gv": gn(params, batch, v)}


def random_like(params, seed, unit=False):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    v = jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape, x.dtype)
                                     for k, x in zip(keys, leaves)])
    if not unit:
        return v
    norm = np.linalg.norm(flat(v))
    return jax.tree.map(lambda x: x / norm, v)


def flat(tree):
    """All leaves of ``tree`` as one float64 host vector.

    Comparisons run in NumPy on the host: one transfer per product instead of dozens of
    small programs over 8-device-sharded leaves queued behind the product, which on an
    overloaded 2-core machine can exhaust the XLA CPU client's launch threads (all
    blocked in an all-reduce or on the per-device in-flight limit) and deadlock.
    """
    return np.concatenate([np.asarray(x, np.float64).ravel()
                           for x in jax.tree.leaves(jax.device_get(tree))])


def rel_err(a, b):
    return float(np.linalg.norm(flat(a) - flat(b)) / np.linalg.norm(flat(b)))


def vdot(a, b):
    return float(flat(a) @ flat(b))


def test_hvp_matches_central_differences_of_the_gradient(tiny, reference):
    graphdef, params, batch = tiny
    loss = answer_nll(graphdef)
    f = lambda p: loss(p, batch)  # noqa: E731
    v, hv = reference["v"], reference["hv"]  # ‖v‖ = 1, ‖θ‖ ≈ 19
    u = random_like(params, 2)
    grad = jax.jit(jax.grad(f))
    # Central differences: error O(ε²‖∇³L‖) + float32 round-off O(1e-7‖∇L‖/ε); ε = 1e-2
    # balances the two (measured relative error ~7e-5; 1e-1 gives ~9e-4, 3e-4 ~2e-3).
    eps = 1e-2
    g_plus = grad(jax.tree.map(lambda p, d: p + eps * d, params, v))
    g_minus = grad(jax.tree.map(lambda p, d: p - eps * d, params, v))
    fd = jax.tree.map(lambda a, b: (a - b) / (2 * eps), g_plus, g_minus)
    assert rel_err(fd, hv) < 1e-3
    assert vdot(u, fd) == pytest.approx(vdot(u, hv), rel=1e-3)


def numpy_gauss_newton(graphdef, params, batch, v):
    """``Jᵀ H_out J v`` with ``H_out = diag(w)(diag p − p pᵀ)`` per position, in NumPy (float64)."""
    def logits_fn(p):
        return nnx.merge(graphdef, p)(batch.input_ids, batch.attention_mask)

    logits, jv = jax.jit(lambda p, v: jax.jvp(logits_fn, (p,), (v,)))(params, v)
    z, u = np.asarray(logits, np.float64), np.asarray(jv, np.float64)
    prob = np.exp(z - z.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    w = batch.loss_mask / batch.loss_mask.sum()  # token-mean NLL
    h_u = w[..., None] * (prob * u - prob * (prob * u).sum(-1, keepdims=True))
    vjp = jax.jit(lambda p, ct: jax.vjp(logits_fn, p)[1](ct))
    (out,) = vjp(params, jnp.asarray(h_u, jnp.float32))
    return out


def test_gauss_newton_product_matches_numpy_and_is_psd(tiny, reference):
    graphdef, params, batch = tiny
    gn = reference["gn"]
    vs = [reference["v"]] + [random_like(params, s) for s in (4, 5)]
    products = [reference["gv"]] + [gn(params, batch, v) for v in vs[1:]]
    assert rel_err(products[0], numpy_gauss_newton(graphdef, params, batch, vs[0])) < 1e-4
    for v, gv in zip(vs, products):
        quad = vdot(v, gv)
        print(f"vᵀGv = {quad:.4g}")
        assert quad > 0.0  # PSD (and here positive: v is not in the null space)
    # Symmetric: uᵀ G v = vᵀ G u.
    assert vdot(vs[0], products[1]) == pytest.approx(
        vdot(vs[1], products[0]), rel=1e-4)
    # The Gauss-Newton matrix is what the Hessian becomes without the second-order term of
    # the network: at this (untrained) point they differ, which is why newton defaults to it.
    assert rel_err(reference["hv"], products[0]) > 1e-3


def test_products_with_fsdp_sharded_params_equal_unsharded(tiny, reference):
    graphdef, params, batch = tiny
    assert len(jax.devices()) >= 8, "conftest sets 8 simulated CPU devices"
    mesh = mesh_lib.make_mesh(data=1, fsdp=8)
    shardings = mesh_lib.param_shardings(params, mesh)
    sharded = jax.device_put(params, shardings)
    v = reference["v"]
    v_sharded = jax.device_put(v, shardings)
    embed = jax.tree.leaves(sharded)[0]
    assert not embed.sharding.is_fully_replicated  # really split over the 8 devices
    rep = jax.device_put(batch, mesh_lib.replicated(mesh))
    # curvature_product("hessian") on the sharded pytree = secondorder.hvp unsharded;
    # likewise the Gauss-Newton product. The results keep the parameters' layout.
    for kind, ref in (("hessian", reference["hv"]), ("gauss_newton", reference["gv"])):
        out = jax.jit(curvature_product(graphdef, kind))(sharded, rep, v_sharded)
        assert rel_err(out, ref) < 1e-5, kind
        for o, p in zip(jax.tree.leaves(out), jax.tree.leaves(sharded)):
            assert o.sharding.is_equivalent_to(p.sharding, o.ndim), kind
