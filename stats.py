"""
The statistics behind reproduce.py's tables: t intervals over seeds, paired tests between heads, geometric
means of ratios, and the "x-fold tokens" comparison of annealed loss curves. numpy and the standard library
only (no scipy: the t CDF comes from a continued fraction for the regularized incomplete beta).

    interval(xs)                       mean ± t·sd/√n over seeds: {'mean', 'lo', 'hi', 'n', 'sd', 'half'}
    paired(a, b)                       interval of a_i − b_i plus the two-sided paired-t p-value 'p'
    geometric(ratios)                  geometric mean of ratios with its interval (t interval of the logs)
    annealed_curve(points)             (tokens, loss) of cooldown ends, the loss as its running minimum
    tokens_to(points, level)           tokens at which an annealed curve reaches a loss: (tokens, status)
    xfold_curve(curves, ref, levels)   per head and level: how many times ref's tokens the head needs
    levels_between(curves, ref, n)     n loss levels that ref reaches on every seed
    std_error(losses)                  standard error of a mean over evaluation windows
"""
import math

import numpy as np

# t_{0.975, df} for df = 1..30 (two-sided 95%); beyond 30 the Cornish–Fisher expansion is within 1e-3
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
        2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
        2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
Z975 = 1.959964  # the normal quantile the expansion starts from

BETACF_EPS = 3e-16  # relative change of the continued fraction at which it has converged
BETACF_TINY = 1e-300  # stands in for a zero denominator in Lentz's method
BETACF_MAX_TERMS = 300  # ample: the fraction converges in O(√max(a, b)) terms


def t975(df):
    """The two-sided 95% Student-t quantile t_{0.975, df}: the table up to df = 30, Cornish–Fisher beyond."""
    if df < 1:
        raise ValueError(f"t975 needs df >= 1, got {df}: an interval needs at least two values")
    if df <= len(T975):
        return T975[int(df) - 1]
    z = Z975
    first = (z**3 + z) / (4 * df)
    second = (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
    return z + first + second


def interval(xs):
    """The t interval of the mean of xs (None entries dropped): {'mean', 'lo', 'hi', 'n', 'sd', 'half'}.
    One value: mean only (lo, hi, sd, half None). No values: n = 0 and everything else None."""
    values = np.array([x for x in xs if x is not None], dtype=np.float64)
    n = len(values)
    if n == 0:
        return dict(mean=None, lo=None, hi=None, n=0, sd=None, half=None)
    mean = float(values.mean())
    if n == 1:
        return dict(mean=mean, lo=None, hi=None, n=1, sd=None, half=None)
    sd = float(values.std(ddof=1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return dict(mean=mean, lo=mean - half, hi=mean + half, n=n, sd=sd, half=half)


def betacf(a, b, x):
    """The continued fraction of the regularized incomplete beta I_x(a, b), by the modified Lentz method
    (Numerical Recipes §6.4); converges fast for x < (a + 1) / (a + b + 2)."""
    c = 1.0
    d = 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > BETACF_TINY else BETACF_TINY)
    h = d
    for m in range(1, BETACF_MAX_TERMS + 1):
        # each m contributes an even term then an odd term of the fraction
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > BETACF_TINY else BETACF_TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > BETACF_TINY else BETACF_TINY
            factor = c * d
            h *= factor
        if abs(factor - 1.0) < BETACF_EPS:
            return h
    raise ValueError(f"betacf did not converge for a={a}, b={b}, x={x}: a or b is too large for this method")


def incomplete_beta(a, b, x):
    """The regularized incomplete beta I_x(a, b) for a, b > 0 and 0 ≤ x ≤ 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    # the fraction converges fast below the mean; above it, use I_x(a, b) = 1 − I_{1−x}(b, a)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * betacf(a, b, x) / a
    return 1.0 - front * betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t, df):
    """P(|T| ≥ |t|) for Student's t with df degrees of freedom: I_{df/(df+t²)}(df/2, 1/2)."""
    return incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def paired(a, b):
    """interval() of the paired differences a_i − b_i (a pair with a None is dropped) plus 'p', the two-sided
    p-value of the paired t test (None below two pairs; sd = 0: 0.0 if the mean differs from 0, else 1.0)."""
    if len(a) != len(b):
        raise ValueError(f"paired needs equal lengths, got {len(a)} and {len(b)}: pair the runs by seed")
    diffs = [x - y for x, y in zip(a, b) if x is not None and y is not None]
    result = interval(diffs)
    if result['n'] < 2:
        result['p'] = None
        return result
    if result['sd'] == 0.0:
        result['p'] = 0.0 if result['mean'] != 0.0 else 1.0
        return result
    t = result['mean'] / (result['sd'] / math.sqrt(result['n']))
    result['p'] = t_two_sided_p(t, result['n'] - 1)
    return result


def geometric(ratios):
    """The geometric mean of positive ratios (None dropped) and its t interval, computed on the logs:
    {'mean', 'lo', 'hi', 'n'}, lo and hi None below two ratios."""
    kept = [r for r in ratios if r is not None]
    if any(r <= 0 for r in kept):
        raise ValueError(f"geometric needs positive ratios, got {kept}: a ratio of token counts is > 0")
    logs = interval([math.log(r) for r in kept])
    out = dict(n=logs['n'])
    for key in ('mean', 'lo', 'hi'):
        out[key] = None if logs[key] is None else math.exp(logs[key])
    return out


def annealed_curve(points):
    """(tokens, loss) arrays of the annealed ends of cooldown branches, sorted by tokens, the loss replaced by
    its running minimum: a longer budget could always have stopped at a shorter one's point."""
    if len(points) == 0:
        raise ValueError("annealed_curve needs at least one (tokens, loss) point: run a cooldown first")
    pairs = sorted((float(t), float(loss)) for t, loss in points)
    tokens = np.array([t for t, _ in pairs])
    if tokens[0] <= 0:
        raise ValueError(f"annealed_curve needs positive token counts, got {tokens[0]}: budgets are > 0")
    loss = np.minimum.accumulate(np.array([loss for _, loss in pairs]))
    return tokens, loss


def tokens_to(points, level):
    """Tokens at which the annealed curve of points first reaches loss `level`, log(tokens) interpolated
    linearly in loss between the two budgets that bracket it: (tokens, status) with status
    'ok', 'censored' (never reached: tokens = the last budget, a lower bound) or 'before' (already strictly
    below level at the first budget: tokens = the first budget, an upper bound)."""
    tokens, loss = annealed_curve(points)
    if loss[0] < level:
        return float(tokens[0]), 'before'
    if loss[-1] > level:
        return float(tokens[-1]), 'censored'
    # the envelope is non-increasing, so the first budget at or below level is where it is crossed
    i = int(np.argmax(loss <= level))
    if i == 0:
        return float(tokens[0]), 'ok'
    frac = (loss[i - 1] - level) / (loss[i - 1] - loss[i])
    log_t = math.log(tokens[i - 1]) + frac * (math.log(tokens[i]) - math.log(tokens[i - 1]))
    return math.exp(log_t), 'ok'


def xfold_curve(curves, ref, levels):
    """How many times ref's tokens each other head needs to reach each loss level, paired by seed.

    curves = {head: {seed: points}}, points as in tokens_to. Returns {head: [dict(level, ratio, n_ok,
    censored, lower_bound, before, upper_bound)]}: ratio = geometric() of tokens_head / tokens_ref over the
    seeds where both reach the level inside their budgets; censored = seeds where the head never reaches it,
    lower_bound = the smallest last_budget / tokens_ref among them (None if none); before = seeds where the
    head is below the level at its first budget, upper_bound = the largest first_budget / tokens_ref among
    them (None if none). A level that ref does not reach ('ok') on every one of its seeds is skipped."""
    if ref not in curves:
        raise ValueError(f"xfold_curve: ref {ref!r} is not a head of curves ({sorted(curves)}): pass one")
    ref_curves = curves[ref]
    out = {head: [] for head in curves if head != ref}
    for level in levels:
        ref_tokens = {seed: tokens_to(points, level) for seed, points in ref_curves.items()}
        if any(status != 'ok' for _, status in ref_tokens.values()):
            continue
        for head in out:
            ratios = []
            lower = []
            upper = []
            for seed, points in curves[head].items():
                if seed not in ref_tokens:
                    continue
                tokens, status = tokens_to(points, level)
                ratio = tokens / ref_tokens[seed][0]
                if status == 'ok':
                    ratios.append(ratio)
                elif status == 'censored':
                    lower.append(ratio)
                else:
                    upper.append(ratio)
            out[head].append(dict(level=float(level), ratio=geometric(ratios), n_ok=len(ratios),
                                  censored=len(lower), lower_bound=min(lower) if lower else None,
                                  before=len(upper), upper_bound=max(upper) if upper else None))
    return out


def levels_between(curves, ref, n=20):
    """n evenly spaced loss levels, from hi = the lowest first-budget loss of ref over its seeds down to
    lo = the highest last-budget (annealed) loss, both included: ref reaches ('ok') every one on every seed.
    [] when hi <= lo (the seeds' curves do not overlap)."""
    if n < 1:
        raise ValueError(f"levels_between needs n >= 1, got {n}: ask for at least one level")
    if ref not in curves or not curves[ref]:
        raise ValueError(f"levels_between: ref head {ref!r} has no curves: pass a head of curves with seeds")
    firsts = []
    lasts = []
    for points in curves[ref].values():
        _, loss = annealed_curve(points)
        firsts.append(loss[0])
        lasts.append(loss[-1])
    hi = float(min(firsts))
    lo = float(max(lasts))
    if hi <= lo:
        return []
    # linspace sets both ends exactly, so the ends stay 'ok' rather than 'before' or 'censored' by rounding
    return [float(x) for x in np.linspace(hi, lo, n)]


def std_error(losses):
    """The standard error of the mean of per-window mean losses: sd (ddof=1) / √n; None below two windows."""
    values = np.asarray(losses, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"std_error needs a flat list of per-window losses, got shape {values.shape}")
    if len(values) < 2:
        return None
    return float(values.std(ddof=1) / math.sqrt(len(values)))
