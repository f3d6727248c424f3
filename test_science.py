"""
Tests of the science helpers reproduce.py's experiments use: stats.py (t intervals, paired tests, geometric
means, x-fold token ratios of annealed loss curves), fit_head.py (heads fitted on frozen hidden states) and
hmm.py (the synthetic language with an exact floor).
Each checks against an independent reference: hand computations, closed forms of the t CDF, synthetic loss
curves with a known x-fold answer, a synthetic softmax problem with a known optimum, torch's SVD, Monte
Carlo estimates.

    python -m pytest -q test_science.py         # a few seconds on one core
"""
import math

import pytest
import torch
import torch.nn.functional as F

import fit_head
import hmm
import stats
from options import ConfigError

# -----------------------------------------------------------------------------
# stats.py: t quantiles, intervals, paired tests


def test_t975_table_and_cornish_fisher():
    assert stats.t975(2) == 4.303
    assert stats.t975(30) == 2.042
    # published t_{0.975} quantiles: 2.0003 at df 60, 1.9623 at df 1000
    assert stats.t975(60) == pytest.approx(2.0003, abs=2e-3)
    assert stats.t975(1000) == pytest.approx(1.9623, abs=2e-4)
    # the expansion joins the table smoothly: just below t(30) and decreasing
    assert stats.t975(40) < stats.t975(31) < stats.t975(30)
    with pytest.raises(ValueError, match="df >= 1"):
        stats.t975(0)


def test_interval_edge_cases():
    one = stats.interval([None, 3.0])
    assert (one['mean'], one['n'], one['lo'], one['hi'], one['sd']) == (3.0, 1, None, None, None)
    empty = stats.interval([None])
    assert empty['n'] == 0
    assert all(empty[k] is None for k in ('mean', 'lo', 'hi', 'sd', 'half'))


def test_paired_against_hand_computation():
    # differences 0.5, 1, 1.5: mean 1, sd 0.5, t = 1 / (0.5/√3) = 3.464 on df 2
    r = stats.paired([1.0, 2.0, 4.0], [0.5, 1.0, 2.5])
    assert r['n'] == 3
    assert r['mean'] == pytest.approx(1.0)
    assert r['sd'] == pytest.approx(0.5)
    assert r['half'] == pytest.approx(4.303 * 0.5 / math.sqrt(3), abs=1e-9)
    assert r['half'] == pytest.approx(1.2422, abs=1e-4)
    assert r['lo'] == pytest.approx(1.0 - 1.2422, abs=1e-4)
    assert r['hi'] == pytest.approx(1.0 + 1.2422, abs=1e-4)
    # df 2 has the closed form p = 1 − t/√(t² + 2)
    t = 1.0 / (0.5 / math.sqrt(3))
    assert r['p'] == pytest.approx(1 - t / math.sqrt(t * t + 2), abs=1e-9)
    assert r['p'] == pytest.approx(0.0742, abs=1e-3)
    # a pair with a None on either side is dropped: the same three differences remain
    dropped = stats.paired([1.0, None, 2.0, 4.0, 3.0], [0.5, 1.0, 1.0, 2.5, None])
    assert dropped == r
    with pytest.raises(ValueError, match="equal lengths"):
        stats.paired([1.0, 2.0], [1.0])


def test_paired_p_matches_closed_forms_and_degenerate_cases():
    # t CDFs in closed form, df 1: p = 1 − (2/π)·atan|t|; df 2: p = 1 − |t|/√(t² + 2). Small t takes the
    # continued fraction's symmetric branch, large t its direct branch.
    for t in (0.05, 0.7, 1.0, 3.0, 12.0, 300.0):
        df1 = 1 - 2 / math.pi * math.atan(t)
        df2 = 1 - t / math.sqrt(t * t + 2)
        assert stats.t_two_sided_p(t, 1) == pytest.approx(df1, rel=1e-10, abs=1e-14)
        assert stats.t_two_sided_p(t, 2) == pytest.approx(df2, rel=1e-10, abs=1e-14)
    # at the 95% quantile the two-sided p is 0.05 (table rounding: 3 decimals of t)
    assert stats.t_two_sided_p(stats.t975(10), 10) == pytest.approx(0.05, abs=2e-4)
    assert stats.t_two_sided_p(-3.0, 5) == stats.t_two_sided_p(3.0, 5)
    # many degrees of freedom: the normal limit, where the fraction needs the symmetry to converge
    assert stats.t_two_sided_p(1.959964, 10**6) == pytest.approx(0.05, abs=1e-4)
    assert stats.t_two_sided_p(0.5, 10**6) == pytest.approx(0.617075, abs=1e-5)   # 2·(1 − Φ(0.5))
    assert stats.paired([2.0, 3.0], [1.0, 2.0])['p'] == 0.0
    assert stats.paired([1.0, 1.0], [1.0, 1.0])['p'] == 1.0
    assert stats.paired([1.0], [0.0])['p'] is None


def test_geometric_mean_of_ratios():
    g = stats.geometric([2.0, 8.0, None])
    assert g['n'] == 2
    assert g['mean'] == pytest.approx(4.0)
    # the interval lives on the logs: ln 4 ± t(1)·sd/√2 with sd = (ln 8 − ln 2)/√2
    half = 12.706 * (math.log(4.0) / math.sqrt(2)) / math.sqrt(2)
    assert g['lo'] == pytest.approx(4.0 * math.exp(-half))
    assert g['hi'] == pytest.approx(4.0 * math.exp(half))
    with pytest.raises(ValueError, match="positive"):
        stats.geometric([1.0, 0.0])


def test_std_error():
    assert stats.std_error([1.0, 2.0, 3.0, 4.0]) == pytest.approx(math.sqrt(5.0 / 3.0) / 2.0)
    assert stats.std_error([2.5]) is None


# -----------------------------------------------------------------------------
# stats.py: annealed curves and x-fold token ratios

REF_BUDGETS = [1e6 * 2**i for i in range(5)]      # 1M .. 16M tokens
HEAD_BUDGETS = [1e6 * 2**i for i in range(8)]     # 1M .. 128M: room for a head that needs 4.5× the tokens
SLOPE = 0.5
OFFSETS = {0: 5.0, 1: 5.01, 2: 5.02}              # per seed: ref's loss a_s − SLOPE·ln t
FOLDS = {0: 2.0, 1: 3.0, 2: 4.5}                  # per seed: the head needs k_s× ref's tokens; geomean 3


def log_linear(seed, fold, budgets, flat_after=None):
    """(tokens, loss) of L(t) = a_s − SLOPE·ln(t/fold), held flat after the budget flat_after."""
    points = []
    for t in budgets:
        stop = t if flat_after is None else min(t, flat_after)
        points.append((t, OFFSETS[seed] - SLOPE * math.log(stop / fold)))
    return points


def ref_tokens(seed, level):
    """Where ref's log-linear curve crosses level, exactly."""
    return math.exp((OFFSETS[seed] - level) / SLOPE)


def test_annealed_curve_sorts_and_takes_the_running_minimum():
    tokens, loss = stats.annealed_curve([(400, 2.5), (100, 3.0), (200, 2.0), (800, 2.2)])
    assert tokens.tolist() == [100, 200, 400, 800]
    assert loss.tolist() == [3.0, 2.0, 2.0, 2.0]


def test_tokens_to_interpolates_log_tokens_and_reports_censoring():
    points = [(100, 3.0), (10000, 2.0)]
    tokens, status = stats.tokens_to(points, 2.5)
    assert status == 'ok'
    assert tokens == pytest.approx(1000.0)   # halfway in loss is halfway in log(tokens)
    assert stats.tokens_to(points, 1.5) == (10000.0, 'censored')
    assert stats.tokens_to(points, 3.5) == (100.0, 'before')
    # the ends of the curve are reached, not bounds
    assert stats.tokens_to(points, 3.0) == (100.0, 'ok')
    assert stats.tokens_to(points, 2.0) == pytest.approx((10000.0, 'ok'))
    # a worse later point does not undo an earlier crossing: the envelope holds 2.0 from 1000 on
    bumpy = [(100, 3.0), (1000, 2.0), (10000, 2.8)]
    assert stats.tokens_to(bumpy, 2.5)[0] == pytest.approx(math.sqrt(100 * 1000))


def test_xfold_curve_recovers_a_known_fold():
    curves = {'ref': {s: log_linear(s, 1.0, REF_BUDGETS) for s in OFFSETS},
              'slow': {s: log_linear(s, FOLDS[s], HEAD_BUDGETS) for s in OFFSETS}}
    levels = stats.levels_between(curves, 'ref', n=6)
    assert len(levels) == 6
    assert levels[0] == pytest.approx(OFFSETS[0] - SLOPE * math.log(REF_BUDGETS[0]))
    assert levels[-1] == pytest.approx(OFFSETS[2] - SLOPE * math.log(REF_BUDGETS[-1]))
    out = stats.xfold_curve(curves, 'ref', levels)
    assert list(out) == ['slow']
    assert [row['level'] for row in out['slow']] == levels   # ref is 'ok' at every level levels_between gives
    for row in out['slow']:
        assert row['n_ok'] == 3
        assert row['censored'] == 0
        assert row['lower_bound'] is None
        assert row['ratio']['mean'] == pytest.approx(3.0, rel=1e-6)   # (2 · 3 · 4.5)^(1/3)
        assert row['ratio']['lo'] < 3.0 < row['ratio']['hi']
    # per seed, exactly k_s: log-interpolation is exact on a log-linear curve
    level = levels[3]
    for s in OFFSETS:
        head_t, _ = stats.tokens_to(curves['slow'][s], level)
        ref_t, _ = stats.tokens_to(curves['ref'][s], level)
        assert head_t / ref_t == pytest.approx(FOLDS[s], rel=1e-9)
        assert ref_t == pytest.approx(ref_tokens(s, level), rel=1e-9)


def test_xfold_curve_censors_a_head_that_stalls():
    stall = 4e6
    curves = {'ref': {s: log_linear(s, 1.0, REF_BUDGETS) for s in OFFSETS},
              'stuck': {s: log_linear(s, 2.0, HEAD_BUDGETS, flat_after=stall) for s in OFFSETS}}
    levels = stats.levels_between(curves, 'ref', n=9)
    # a level below ref's reach on one seed is skipped, not reported
    too_low = OFFSETS[2] - SLOPE * math.log(REF_BUDGETS[-1]) - 0.01
    out = stats.xfold_curve(curves, 'ref', levels + [too_low])['stuck']
    assert [row['level'] for row in out] == levels
    n_censored = 0
    for row in out:
        floors = [OFFSETS[s] - SLOPE * math.log(stall / 2.0) for s in OFFSETS]
        if row['level'] >= max(floors):
            assert row['censored'] == 0
            assert row['ratio']['mean'] == pytest.approx(2.0, rel=1e-6)
        if row['level'] < min(floors):
            n_censored += 1
            assert (row['censored'], row['n_ok'], row['ratio']['mean']) == (3, 0, None)
            # the bound is the last budget over ref's tokens, smallest for the seed ref needs most tokens on
            bound = min(HEAD_BUDGETS[-1] / ref_tokens(s, row['level']) for s in OFFSETS)
            assert row['lower_bound'] == pytest.approx(bound, rel=1e-9)
    assert n_censored >= 3


def test_levels_between_empty_when_seeds_do_not_overlap():
    curves = {'ref': {0: [(1, 3.0), (2, 2.5)], 1: [(1, 2.4), (2, 2.0)]}}
    assert stats.levels_between(curves, 'ref') == []


# -----------------------------------------------------------------------------
# fit_head.py: heads fitted on frozen hidden states

N_TOKENS, DIM, VOCAB = 20000, 8, 50


def draw(n, W, gen):
    """n Gaussian hidden states and targets sampled from softmax(H Wᵀ)."""
    H = torch.randn(n, W.size(1), generator=gen)
    probs = torch.softmax(H @ W.t(), dim=1)
    y = torch.multinomial(probs, 1, generator=gen).squeeze(1)
    return H, y


@pytest.fixture(scope='module')
def problem():
    """A true rank-2 head W* (V = 50, D = 8), training tokens and a fresh evaluation set drawn from it."""
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(VOCAB, 2, generator=gen) @ (0.6 * torch.randn(2, DIM, generator=gen))
    H, y = draw(N_TOKENS, W, gen)
    H_eval, y_eval = draw(N_TOKENS, W, gen)
    return dict(W=W, H=H, y=y, H_eval=H_eval, y_eval=y_eval, gen=gen)


def test_head_loss_matches_plain_cross_entropy(problem):
    gen = torch.Generator().manual_seed(1)
    B = torch.randn(VOCAB, 3, generator=gen)
    A = torch.randn(3, DIM, generator=gen)
    H = problem['H'][:1000]
    y = problem['y'][:1000].clone()
    y[::7] = -1   # ignored, as in fused_loss
    want = F.cross_entropy(H @ (B @ A).t(), y, ignore_index=-1).item()
    assert fit_head.head_loss(H, y, B, A, chunk=96) == pytest.approx(want, rel=1e-5)
    assert fit_head.head_loss(H, y, B @ A, chunk=96) == pytest.approx(want, rel=1e-5)


def test_fit_head_reaches_the_true_models_loss_and_rank_1_cannot(problem):
    true_loss = fit_head.head_loss(problem['H_eval'], problem['y_eval'], problem['W'])
    assert true_loss < math.log(VOCAB) - 1.0   # the problem is far from uniform
    gen = torch.Generator().manual_seed(2)
    results = {}
    for r in (2, 1):
        B0 = 0.1 * torch.randn(VOCAB, r, generator=gen)
        A0 = 0.1 * torch.randn(r, DIM, generator=gen)
        B0_copy = B0.clone()
        fit = fit_head.fit_head(problem['H'], problem['y'], B0, A0, lr=0.03, batch_tokens=1000,
                                max_epochs=200, patience=2, seed=r)
        assert torch.equal(B0, B0_copy)                    # the initial values are copied, not trained
        assert fit['stopped'] == 'patience'
        assert fit['epochs'] < 200
        assert fit['holdout_loss'] == min(fit['evals'])    # the returned head is the best one seen
        results[r] = fit_head.head_loss(problem['H_eval'], problem['y_eval'], fit['B'], fit['A'])
    assert results[2] - true_loss < 0.02
    assert results[2] >= true_loss - 0.02   # a fresh set: no fit beats the truth beyond noise
    assert results[1] - results[2] > 0.05


def test_fit_head_never_trains_on_the_holdout(problem):
    # the held-out tokens alone use hidden dimension 0, and their target, class V, is no training token's:
    # training never moves B[:, 0], so the held-out loss must not move at all; a fit that trained on them
    # would learn to predict class V from dimension 0 and drive that loss down
    H = problem['H'][:5000].clone()
    y = problem['y'][:5000].clone()
    H[:, 0] = 0.0
    H[4500:] = 0.0
    H[4500:, 0] = 5.0
    y[4500:] = VOCAB
    gen = torch.Generator().manual_seed(3)
    B0 = 0.01 * torch.randn(VOCAB + 1, DIM, generator=gen)
    fit = fit_head.fit_head(H, y, B0, None, lr=0.03, batch_tokens=500, holdout=0.1, max_epochs=3,
                            patience=100, eval_every=3)
    assert fit['A'] is None
    assert fit['stopped'] == 'max_epochs'
    assert fit['steps'] == 27
    assert fit['epochs'] == pytest.approx(3.0)
    assert len(fit['evals']) == 10
    assert fit['evals'] == pytest.approx([fit['evals'][0]] * 10, abs=1e-6)
    assert torch.equal(fit['B'], B0)   # nothing beat the initial head, so it is the one returned


def test_fit_head_full_rank_probe_warm_start(problem):
    # the converged probe: a full-rank head warm-started near the truth ends no worse than it started
    gen = torch.Generator().manual_seed(4)
    W0 = problem['W'] + 0.3 * torch.randn(VOCAB, DIM, generator=gen)
    fit = fit_head.fit_head(problem['H'], problem['y'], W0, None, lr=0.01, batch_tokens=2000, max_epochs=30)
    assert fit['stopped'] == 'patience'
    assert fit['holdout_loss'] < fit['evals'][0] - 0.05
    true_loss = fit_head.head_loss(problem['H_eval'], problem['y_eval'], problem['W'])
    fitted = fit_head.head_loss(problem['H_eval'], problem['y_eval'], fit['B'])
    assert fitted - true_loss < 0.03   # 400 free parameters on 18,000 tokens: a little overfitting


def test_fit_head_rejects_mismatched_shapes(problem):
    with pytest.raises(ValueError, match="A must be"):
        fit_head.fit_head(problem['H'], problem['y'], torch.zeros(VOCAB, 2), torch.zeros(3, DIM))
    with pytest.raises(ValueError, match="holdout"):
        fit_head.fit_head(problem['H'], problem['y'], torch.zeros(VOCAB, DIM), holdout=1.0)


def test_rank_r_init_is_the_truncated_svd():
    gen = torch.Generator().manual_seed(5)
    W = torch.randn(30, 10, generator=gen, dtype=torch.float64)
    r = 3
    B, A = fit_head.rank_r_init(W, r)
    assert B.shape == (30, r)
    assert A.shape == (r, 10)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    truncation = U[:, :r] @ torch.diag(S[:r]) @ Vh[:r]
    assert torch.allclose(B @ A, truncation, atol=1e-12)
    err = torch.linalg.norm(W - B @ A).item()
    assert err == pytest.approx(math.sqrt((S[r:] ** 2).sum().item()), rel=1e-12)
    # balanced factors: both carry √S, so BᵀB = AAᵀ = diag(S_r)
    assert torch.allclose(B.t() @ B, torch.diag(S[:r]), atol=1e-12)
    assert torch.allclose(A @ A.t(), torch.diag(S[:r]), atol=1e-12)
    with pytest.raises(ValueError, match="rank r"):
        fit_head.rank_r_init(W, 11)


# -----------------------------------------------------------------------------
# hmm.py: the language with an exact floor


def test_hmm_floor_matches_monte_carlo():
    lang = hmm.Language(513, states=16)
    x, y = lang.get_batch(256, 64, torch.Generator().manual_seed(0))
    assert (x[:, 0] == hmm.BOS).all() and (x[:, 1:] == y[:, :-1]).all() and (lang.state_of[y] >= 0).all()
    # positions >= 1: the mean of -log p(y_t | y_{t-1}) under the exact conditional estimates the entropy rate
    nll = -lang.log_prob(y[:, :-1], y[:, 1:]).flatten()
    assert torch.isfinite(nll).all()
    assert abs(nll.mean().item() - lang.entropy_rate()) < 4 * nll.std().item() / nll.numel() ** 0.5
    # position 0: y_1 comes from the stationary state and its emission
    s = lang.state_of[y[:, 0]]
    rank = (lang.group[s] == y[:, :1]).float().argmax(-1)
    first = -(torch.log(lang.pi[s]) + torch.log(lang.E[s, rank]))
    assert abs(first.mean().item() - lang.first_entropy()) < 4 * first.std().item() / 256 ** 0.5
    assert lang.floor(64) == pytest.approx((lang.first_entropy() + 63 * lang.entropy_rate()) / 64)
    # the chain is stationary: the state frequencies at every position follow pi
    counts = torch.bincount(lang.state_of[y].flatten(), minlength=16).double() / y.numel()
    assert (counts - lang.pi).abs().max() < 0.01
    # a rough language has a floor between 0 and log V, below the unigram entropy
    assert 0 < lang.entropy_rate() < lang.first_entropy() < math.log(512)


def test_hmm_log_probability_matrix_has_rank_at_most_states_plus_one():
    lang = hmm.Language(97, states=6)  # 96 symbols, 16 per state
    symbols = lang.group.flatten()
    xs, ys = symbols.repeat_interleave(96), symbols.repeat(96)
    L = lang.log_prob(xs, ys).view(96, 96)
    assert torch.allclose(L.exp().sum(1), torch.ones(96, dtype=torch.float64))  # each row a distribution
    first = torch.log(lang.pi[lang.state_of[symbols]]) + torch.log(lang.E[0])[
        (lang.group[lang.state_of[symbols]] == symbols.unsqueeze(1)).float().argmax(1)]
    assert torch.allclose(first.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.linalg.matrix_rank(torch.cat([L, first.unsqueeze(0)])).item() <= 7


def test_hmm_batches_follow_the_generator_and_bad_specs_are_refused():
    lang = hmm.Language(1024)
    a = lang.get_batch(4, 16, torch.Generator().manual_seed(3))
    b = lang.get_batch(4, 16, torch.Generator().manual_seed(3))
    c = lang.get_batch(4, 16, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
    # the language is fixed by LANGUAGE_SEED, not by the run
    assert torch.equal(hmm.Language(1024).P, lang.P) and torch.equal(hmm.Language(1024).group, lang.group)
    assert hmm.corpus('hmm:8', 256)['language'].states == 8 and hmm.corpus('hmm', 1024)['fingerprint'] != (
        hmm.corpus('hmm:8', 1024)['fingerprint'])
    for bad in ('hmm:x', 'hmm:²'):  # '²'.isdigit() is True, and int('²') fails
        with pytest.raises(ConfigError, match='write hmm or hmm:S'):
            hmm.corpus(bad, 256)
    with pytest.raises(ConfigError, match='raise --vocab_size, or choose S from 2 to 127'):
        hmm.corpus('hmm:200', 256)
    with pytest.raises(ConfigError, match='choose S from 2 to 127'):  # too few states: raise S, not lower it
        hmm.corpus('hmm:1', 256)
