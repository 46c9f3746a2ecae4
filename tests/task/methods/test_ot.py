import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F

from task.methods.ot import paired_ot, patch_prompt_ot, sinkhorn_plan


def _unit(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)


def test_plan_matches_pot_sinkhorn_and_marginals():
    cost = torch.rand(3, 6, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    plans = sinkhorn_plan(cost, reg=0.1, max_iter=2000, tol=1e-12)
    for k in range(3):
        a, b = np.full(6, 1 / 6), np.full(2, 1 / 2)
        ref = ot.sinkhorn(a, b, cost[k].numpy(), reg=0.1, stopThr=1e-14, numItermax=10000)
        np.testing.assert_allclose(plans[k].numpy(), ref, atol=1e-9)
    torch.testing.assert_close(plans.sum(2), torch.full((3, 6), 1 / 6, dtype=torch.float64))
    torch.testing.assert_close(plans.sum(1), torch.full((3, 2), 1 / 2, dtype=torch.float64))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plan_approaches_exact_ot_as_lambda_shrinks(seed):
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(1, 5, 3, generator=g, dtype=torch.float64)
    exact_plan = ot.emd(np.full(5, 0.2), np.full(3, 1 / 3), cost[0].numpy())
    exact_cost = float((exact_plan * cost[0].numpy()).sum())
    gaps = []
    for reg in (0.1, 0.01, 0.002):
        plan = sinkhorn_plan(cost, reg=reg, max_iter=20000, tol=1e-13)[0].numpy()
        gaps.append(float((plan * cost[0].numpy()).sum()) - exact_cost)
    assert all(gap >= -1e-9 for gap in gaps)  # exact OT is the minimum
    assert gaps[0] >= gaps[1] >= gaps[2]
    assert gaps[-1] < 2e-3
    np.testing.assert_allclose(
        sinkhorn_plan(cost, reg=0.002, max_iter=20000, tol=1e-13)[0].numpy(), exact_plan, atol=5e-3
    )


def test_batched_over_images_and_classes_equals_one_by_one():
    patches, prompts = _unit(4, 7, 8, seed=3), _unit(3, 2, 8, seed=4)
    batched = patch_prompt_ot(patches, prompts, reg=0.1, max_iter=500, tol=1e-12)
    for b in range(4):
        for c in range(3):
            one = paired_ot(patches[b : b + 1], prompts[c : c + 1], 0.1, 500, 1e-12)
            torch.testing.assert_close(batched.similarity[b, c], one.similarity[0, 0])
            torch.testing.assert_close(batched.distance[b, c], one.distance[0, 0])


def test_single_prompt_shortcut_equals_solver():
    """The shortcut itself (solver=auto, M = 1) against POT's Sinkhorn (solver=pot): plans,
    similarities, values and their gradients."""
    patches, prompts = _unit(4, 6, 8, seed=2), _unit(3, 1, 8, seed=3)
    fast_in = prompts.clone().requires_grad_(True)
    slow_in = prompts.clone().requires_grad_(True)
    fast = patch_prompt_ot(patches, fast_in, reg=0.1, max_iter=100, tol=1e-12, solver="auto")
    slow = patch_prompt_ot(patches, slow_in, reg=0.1, max_iter=100, tol=1e-12, solver="pot")
    torch.testing.assert_close(fast.plan, torch.full_like(fast.plan, 1 / 6))
    torch.testing.assert_close(fast.plan, slow.plan)
    torch.testing.assert_close(fast.similarity, slow.similarity)
    torch.testing.assert_close(fast.distance, slow.distance)
    fast.distance.sum().backward()
    slow.distance.sum().backward()
    torch.testing.assert_close(fast_in.grad, slow_in.grad)


@pytest.mark.parametrize("reg", [0.05, 0.1])
def test_two_point_solver_matches_pot_in_float32_at_the_training_tolerance(reg):
    """What training runs: float32 features, loss.ot-tol = 1e-6, 20 to 100 iterations. The
    exact two-point solver and POT's Sinkhorn agree to float32 precision there, in the loss and
    in its gradient."""
    patches = _unit(6, 9, 16, seed=7, dtype=torch.float32)
    prompts = _unit(5, 2, 16, seed=8, dtype=torch.float32)
    out = {}
    for solver, iters in (("auto", 20), ("pot", 1000)):
        p = prompts.clone().requires_grad_(True)
        res = patch_prompt_ot(patches, p, reg=reg, max_iter=iters, tol=1e-6, solver=solver)
        res.distance.sum().backward()
        out[solver] = (res.similarity.detach(), res.distance.detach(), p.grad)
    for fast, slow in zip(out["auto"], out["pot"], strict=True):
        assert fast.dtype == torch.float32
        torch.testing.assert_close(fast, slow, atol=2e-5, rtol=1e-4)


def test_single_prompt_similarity_is_mean_patch_cosine():
    patches, prompts = _unit(2, 5, 8, seed=5), _unit(3, 1, 8, seed=6)
    res = patch_prompt_ot(patches, prompts, reg=0.1)
    expected = torch.einsum("bnd,cd->bcn", patches, prompts[:, 0]).mean(-1)
    torch.testing.assert_close(res.similarity, expected)


@pytest.mark.parametrize("solver", ["auto", "pot"])
def test_ot_distance_gradient_is_exact(solver):
    patches = _unit(2, 4, 3, seed=7).requires_grad_(True)
    prompts = _unit(2, 2, 3, seed=8).requires_grad_(True)

    def distance(p, t):
        return paired_ot(p, t, reg=0.2, max_iter=5000, tol=1e-14, solver=solver).distance

    assert torch.autograd.gradcheck(distance, (patches, prompts), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("reg", [0.5, 0.1, 0.02])
def test_two_point_solver_equals_pot_sinkhorn(reg):
    from task.methods.ot import two_point_plan

    g = torch.Generator().manual_seed(11)
    cost = 1.0 - (2 * torch.rand(40, 9, 2, generator=g, dtype=torch.float64) - 1)
    fast = two_point_plan(cost, reg=reg, max_iter=100, tol=1e-13)
    slow = sinkhorn_plan(cost, reg=reg, max_iter=100000, tol=1e-13)
    torch.testing.assert_close(fast, slow, atol=1e-10, rtol=0)
    torch.testing.assert_close(fast.sum(2), torch.full((40, 9), 1 / 9, dtype=torch.float64))
    torch.testing.assert_close(fast.sum(1), torch.full((40, 2), 1 / 2, dtype=torch.float64))


def test_auto_and_pot_solvers_give_the_same_losses():
    patches, prompts = _unit(5, 16, 8, seed=12), _unit(4, 2, 8, seed=13)
    auto = patch_prompt_ot(patches, prompts, reg=0.1, max_iter=1000, tol=1e-12)
    pot = patch_prompt_ot(patches, prompts, reg=0.1, max_iter=1000, tol=1e-12, solver="pot")
    torch.testing.assert_close(auto.similarity, pot.similarity)
    torch.testing.assert_close(auto.distance, pot.distance)


@pytest.mark.parametrize("reg", [0.5, 0.1, 0.02])
def test_two_point_solver_converges_in_a_handful_of_newton_steps(reg):
    """Its speed is the point (bench/local_step.py): safeguarded Newton reaches float64 precision
    in under a dozen steps (3, 6 and 9 here), where bisection alone in the bracket [-max d,
    -min d] (up to 4 / reg wide) would need about 50."""
    from task.methods.ot import two_point_plan

    g = torch.Generator().manual_seed(11)
    cost = 1.0 - (2 * torch.rand(40, 9, 2, generator=g, dtype=torch.float64) - 1)
    converged = two_point_plan(cost, reg=reg, max_iter=100, tol=1e-13)
    torch.testing.assert_close(
        two_point_plan(cost, reg=reg, max_iter=12, tol=1e-13), converged, atol=1e-12, rtol=0
    )


def _unbalanced_objective(plan, cost, reg, rho):
    """<T, C> + reg sum T log T + rho (KL~(T 1 | 1/N) + KL~(T^T 1 | 1/M)), written out here."""
    n, m = cost.shape[-2:]

    def kl(x, y):
        return (x * np.log(x / y) - x + y).sum(-1)

    return (
        (plan * cost).sum((-2, -1))
        + reg * (plan * np.log(plan)).sum((-2, -1))
        + rho * (kl(plan.sum(-1), 1 / n) + kl(plan.sum(-2), 1 / m))
    )


def test_unbalanced_value_and_similarity_are_the_objective_at_its_minimiser():
    """FedOTP's relaxed OT (loss.ot-marginal-reg > 0): the distance is the objective at the plan,
    the plan minimises it (any perturbation costs more), and the similarity is the plan's
    mass-normalised mean cosine (the mass is far from 1 at a small rho)."""
    patches, prompts = _unit(3, 5, 8, seed=21), _unit(4, 3, 8, seed=22)
    reg, rho = 0.1, 0.05
    res = patch_prompt_ot(patches, prompts, reg, 5000, 1e-13, marginal_reg=rho)
    plan = res.plan.numpy()
    cost = 1.0 - torch.einsum("bnd,cmd->bcnm", patches, prompts).numpy()
    best = _unbalanced_objective(plan, cost, reg, rho)
    np.testing.assert_allclose(res.distance.numpy(), best, rtol=0, atol=1e-10)
    rng = np.random.default_rng(0)
    for _ in range(5):
        moved = plan * np.exp(0.05 * rng.standard_normal(plan.shape))
        assert (_unbalanced_objective(moved, cost, reg, rho) > best).all()
    mass = plan.sum((-2, -1))
    assert np.abs(mass - 1).max() > 0.05
    np.testing.assert_allclose(
        res.similarity.numpy(), (plan * (1 - cost)).sum((-2, -1)) / mass, rtol=0, atol=1e-12
    )


def test_auto_solver_takes_the_exact_shortcuts_and_pot_beyond_two_prompts(monkeypatch):
    """M = 1 and M = 2 never reach Sinkhorn under solver='auto' (the shortcuts are what runs);
    M = 3 does, and equals solver='pot'."""
    import task.methods.ot as ot_module

    patches = _unit(2, 6, 8, seed=23)
    reference = {m: patch_prompt_ot(patches, _unit(3, m, 8, seed=m), 0.1, 2000, 1e-12, solver="pot")
                 for m in (1, 2, 3)}  # fmt: skip

    def no_sinkhorn(*args, **kwargs):
        raise AssertionError("Sinkhorn called where an exact shortcut exists")

    monkeypatch.setattr(ot_module, "sinkhorn_plan", no_sinkhorn)
    for m in (1, 2):
        fast = patch_prompt_ot(patches, _unit(3, m, 8, seed=m), 0.1, 2000, 1e-12)
        torch.testing.assert_close(fast.distance, reference[m].distance, atol=1e-8, rtol=0)
    with pytest.raises(AssertionError, match="Sinkhorn called"):
        patch_prompt_ot(patches, _unit(3, 3, 8, seed=3), 0.1, 2000, 1e-12)
    monkeypatch.undo()
    three = patch_prompt_ot(patches, _unit(3, 3, 8, seed=3), 0.1, 2000, 1e-12)
    torch.testing.assert_close(three.distance, reference[3].distance)


def test_paired_ot_gives_one_column_per_image():
    res = paired_ot(_unit(4, 5, 8, seed=24), _unit(4, 2, 8, seed=25), reg=0.1)
    assert res.similarity.shape == res.distance.shape == (4, 1)
    assert res.plan.shape == (4, 1, 5, 2)
