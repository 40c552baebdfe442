"""M4 data balancing ("CLIP the Bias", Alabdulmohsin et al., ICLR 2024, arXiv 2403.04547).

Multi-Modal Moment Matching gives every example a weight so that, under the weights,
  - first order (representation): the fraction of each sensitive attribute group k
    is within `representation_tolerance` of a target, |E_w[s_k] - pi_k| <= eps_R;
  - second order (association): each sensitive attribute is nearly uncorrelated with
    each label / proxy r, |Cov_w(s_k, y_r)| = |E_w[s_k y_r] - E_w[s_k] E_w[y_r]| <= eps_D.
The weights feed a subsample (`balanced_subsample`), a tf.data pipeline
(`weighted_dataset`) or `model.fit` sample weights.

Shapes: N examples, K sensitive attribute groups, M labels / proxies.
    attributes  (N, K) indicators in [0, 1] (one-hot, multi-hot or soft), or (N,)
                integer group codes (one-hot encoded here)
    labels      (N, M) indicators in [0, 1], or (N,) integer codes, or None
    weights     (N,) float64 in [0, max_weight]

What the sources confirm (the paper's full text was not available; sources: the
abstract; ICLR 2024 reviews of the full text, which name its pseudo-code, dual
decomposition and Propositions 1-2; a study note that reproduces its constraint form;
SigLIP 2, which uses it), and what this module does with it:
  - Per example a sensitive vector s_i (groups may overlap), labels / proxies y_i, a
    utility u_i and a sampling weight q_i in [0, 1]; constraints
    |E[q (s_k - pi_k)]| <= eps_R and |E[q (s_k - pi_k) y_r]| <= eps_D; a size constraint
    E[q] = eta (eta = 0.9 in the paper, "the largest rate at which the constraints stay
    satisfiable"). Here: the same quantities; `mean_weight` = eta (optional), `utility`
    = u, `max_weight` = the upper end of q (1, a keep probability, by default).
  - Solved by dual decomposition: dual variables per constraint and a bias vector per
    example; the result is a per-example sampling probability.
What is reconstructed (the objective, the update rule and the values of eps_D, eps_R,
the enforcement level V and the learning rate were not visible; reference/papers.md
h.3):
  - The problem: min_q sum_i (q_i - u_i)^2 / 2 s.t. the constraints and
    0 <= q_i <= max_weight, i.e. stay as close as possible to the utility (all ones by
    default: the original data). Given duals mu (and nu for E[q] = eta) the primal is
    closed-form, q_i = clip(u_i - mu . v_i - nu, 0, max_weight), with the bias vector
    v_i = [s_i - pi ; (s_i - m) (x) (y_i - n)]. The paper uses soft (hinge) constraints
    traded off against utility with weight V; here they are hard: met to tolerance, or
    a ValueError.
  - The paper runs streaming SGD on the duals. This module holds the data in memory and
    maximises the same concave dual with full-batch L-BFGS-B (scipy): deterministic,
    and it reaches the tolerances instead of hovering near them.
  - The paper's association constraint centres s at its target pi; under the weights
    E_w[(s - pi) y] = Cov_w(s, y) + (E_w[s] - pi) E_w[y], i.e. it equals the covariance
    only when representation is matched exactly. This module bounds the covariance
    itself: v_i is centred at the weighted means m = E_w[s], n = E_w[y], re-estimated
    from the solution and the dual re-solved (warm started) until the true weighted
    covariances meet the bound (2-3 rounds). Constraints are normalised by the total
    weight, so they bound the statistics of the reweighted data whatever its size.
  - Internally the tolerances are tightened by 1% so that the reported statistics land
    inside the requested ones.
  - Examples with identical (s_i, y_i) and no utility get identical weights (the problem
    is strictly convex and symmetric), so binary data is solved on its distinct rows
    with multiplicities (exact); with a utility each example keeps its own weight but
    the bias terms are still computed once per distinct row. Soft attributes fall back
    to one row per example. At 10^6 examples x 10 groups x 10 labels on 2 shared CPU
    cores: about 2.5 s, 4.5 s and 50 s for the three cases (benchmarks/m4_balancing.py).
  - scipy (a dependency of jax) provides L-BFGS-B; it is imported when balancing runs.
Infeasible requests (a group with no examples but a non-zero target, targets of a
partition that do not sum to 1, a `mean_weight` that `max_weight` cannot reach, or
constraints only the all-zero weighting satisfies) raise ValueError naming the problem.
"""

import dataclasses

import numpy as np

_MARGIN = 0.99  # solve with tolerances tightened by 1%
_ROUNDS = 8  # re-centring rounds of the association constraints


# ----------------------------------------------------------------------------- inputs


def _indicators(x, name, num_columns=None):
    """(N,) integer codes or (N, C) values in [0, 1] -> float64 (N, C)."""
    x = np.asarray(x)
    if x.dtype == bool:
        x = x.astype(np.float64)
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"{name} must be numeric or boolean, got dtype {x.dtype}.")
    if x.ndim == 1:
        if not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"1-D {name} must hold integer group codes, got dtype {x.dtype}; "
                             f"pass an (N, C) indicator array for other values.")
        if x.size and x.min() < 0:
            raise ValueError(f"{name} codes must be >= 0, got {x.min()}.")
        columns = max(int(x.max()) + 1 if x.size else 0, num_columns or 0)
        out = np.zeros((x.size, columns))
        out[np.arange(x.size), x] = 1.0
        return out
    if x.ndim != 2:
        raise ValueError(f"{name} must be (N,) integer codes or an (N, C) array, got shape {x.shape}.")
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    if x.size and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"{name} must lie in [0, 1] (indicators), got values in "
                         f"[{x.min()}, {x.max()}].")
    return x


def _inputs(attributes, labels, num_groups=None):
    s = _indicators(attributes, "attributes", num_groups)
    y = np.zeros((len(s), 0)) if labels is None else _indicators(labels, "labels")
    if len(s) == 0 or s.shape[1] == 0:
        raise ValueError(f"attributes must hold at least one example and one group, "
                         f"got shape {s.shape}.")
    if len(y) != len(s):
        raise ValueError(f"attributes and labels disagree on N: {len(s)} vs {len(y)}.")
    return s, y


def _check_weights(weights, n=None):
    w = np.asarray(weights, np.float64)
    if w.ndim != 1 or (n is not None and len(w) != n):
        raise ValueError(f"weights must have shape ({'N' if n is None else n},), got {w.shape}.")
    if not np.all(np.isfinite(w)) or w.min() < 0:
        raise ValueError("weights must be finite and non-negative.")
    if w.sum() <= 0:
        raise ValueError("weights are all zero.")
    return w


# ------------------------------------------------------------------------- statistics


def _stats(s, y, w):
    total = w.sum()
    rep, rate = w @ s / total, w @ y / total
    cov = (s - rep).T @ (w[:, None] * (y - rate)) / total
    return {"representation": rep, "label_rate": rate, "association": cov,
            "total_weight": float(total), "effective_size": float(total**2 / (w @ w))}


def statistics(attributes, labels=None, weights=None):
    """First- and second-order statistics of (weighted) data.

    Args:
        attributes: (N, K) indicators in [0, 1] or (N,) integer group codes.
        labels: (N, M) indicators, (N,) integer codes, or None (M = 0).
        weights: (N,) non-negative weights; None = all ones.
    Returns:
        dict of "representation" (K,) E_w[s_k]; "label_rate" (M,) E_w[y_r];
        "association" (K, M) Cov_w(s_k, y_r); "total_weight" sum(w); and
        "effective_size" (sum w)^2 / sum w^2 (Kish), the sample size the weighted data
        is worth.
    """
    s, y = _inputs(attributes, labels)
    w = np.ones(len(s)) if weights is None else _check_weights(weights, len(s))
    return _stats(s, y, w)


@dataclasses.dataclass(frozen=True)
class BalanceReport:
    """What `balance_weights` achieved. `before` / `after` are `statistics` dicts of
    the data with all-ones weights and with the balanced weights; the gaps are the
    largest |E_w[s_k] - pi_k| and |Cov_w(s_k, y_r)| (0 when there is nothing to
    measure). `rows` = distinct rows the solver saw; `iterations` = L-BFGS-B
    iterations over all re-centring `rounds`. With `proxies`, `proxy_association_*` are
    the (K, P) covariances Cov_w(s_k, proxy_p) and `proxy_gap_*` their largest |.|
    (the labels' statistics in `before` / `after` leave the proxies out)."""
    before: dict
    after: dict
    representation_targets: np.ndarray
    representation_tolerance: float | None
    association_bound: float | None
    representation_gap_before: float
    representation_gap_after: float
    association_gap_before: float
    association_gap_after: float
    mean_weight: float
    rows: int
    rounds: int
    iterations: int
    proxy_bound: float | None = None
    proxy_association_before: np.ndarray = None
    proxy_association_after: np.ndarray = None
    proxy_gap_before: float = 0.0
    proxy_gap_after: float = 0.0

    def summary(self):
        proxies = ("" if self.proxy_association_before is None else
                   f"proxy |cov| {self.proxy_gap_before:.4f} -> {self.proxy_gap_after:.4f} "
                   f"(bound {self.proxy_bound}); ")
        return (f"representation gap {self.representation_gap_before:.4f} -> "
                f"{self.representation_gap_after:.4f} (tolerance {self.representation_tolerance}); "
                f"association |cov| {self.association_gap_before:.4f} -> "
                f"{self.association_gap_after:.4f} (bound {self.association_bound}); " + proxies +
                f"mean weight {self.mean_weight:.3f}, effective size "
                f"{self.after['effective_size']:.0f} of {self.before['effective_size']:.0f}")


def _gaps(stats, pi):
    rep = float(np.abs(stats["representation"] - pi).max())
    cov = stats["association"]
    return rep, float(np.abs(cov).max()) if cov.size else 0.0


# ------------------------------------------------------------------------------ solver


def _targets(targets, s, enabled):
    k = s.shape[1]
    if targets is None:
        if not enabled:
            return s.mean(0)
        if not np.allclose(s.sum(1), 1.0):
            raise ValueError("representation_targets=None means uniform over groups, which needs "
                             "attributes that partition the data (one group per example); pass "
                             "explicit targets for overlapping or soft attributes.")
        return np.full(k, 1.0 / k)
    pi = np.asarray(targets, np.float64)
    pi = np.full(k, float(pi)) if pi.ndim == 0 else pi
    if pi.shape != (k,):
        raise ValueError(f"representation_targets must have shape ({k},) (one per attribute "
                         f"group), got {pi.shape}.")
    if not np.all(np.isfinite(pi)) or pi.min() < 0 or pi.max() > 1:
        raise ValueError(f"representation_targets must lie in [0, 1], got {pi}.")
    return pi


def _check_feasible(s, pi, eps_r, max_weight, mean_weight):
    """Necessary conditions with a precise message; the solver catches the rest."""
    if eps_r is None:
        return
    share = s.mean(0)
    for k in range(len(pi)):
        if share[k] == 0 and pi[k] > eps_r:
            raise ValueError(f"attribute group {k} has no examples, but its target proportion "
                             f"{pi[k]:.3g} +- {eps_r:.3g} needs some.")
        if share[k] == 1 and pi[k] < 1 - eps_r:
            raise ValueError(f"every example belongs to attribute group {k}, so its proportion is 1, "
                             f"but the target is {pi[k]:.3g} +- {eps_r:.3g}.")
    if np.allclose(s.sum(1), 1.0) and abs(pi.sum() - 1) > len(pi) * eps_r:
        raise ValueError(f"the attribute groups partition the data, so their proportions sum to 1, "
                         f"but representation_targets sum to {pi.sum():.3g}.")
    if mean_weight is not None:
        # E_w[s_k] >= pi_k - eps and sum_i w_i s_ik <= max_weight * sum_i s_ik cap the
        # mean weight at max_weight * mean(s_k) / (pi_k - eps); likewise for complements.
        have, target = np.concatenate([share, 1 - share]), np.concatenate([pi, 1 - pi])
        low = target - eps_r
        caps = np.where(low > 0, max_weight * have / np.where(low > 0, low, 1.0), np.inf)
        j = int(np.argmax(caps <= caps.min() * (1 + 1e-9)))  # prefer a group over a complement
        if mean_weight > caps[j] * (1 + 1e-9):
            group = f"{'the complement of ' if j >= len(pi) else ''}attribute group {j % len(pi)}"
            raise ValueError(f"mean_weight={mean_weight:.3g} cannot be met with "
                             f"max_weight={max_weight:.3g}: {group} holds {100 * have[j]:.1f}% of "
                             f"the examples, which caps the mean weight at {caps[j]:.3g} for its "
                             f"target proportion {target[j]:.3g} +- {eps_r:.3g}.")


def _group(s, y, utility):
    """Merges examples with identical binary (s, y) rows.

    Returns rows s (R, K) and y (R, M); the "members" (the unknowns) with anchors p,
    counts c and row index r; and each example's member (N,). Without utility a member
    is a distinct row standing for c identical examples (their weights are equal at the
    optimum); with utility every example is a member (c = 1) pointing at its row, so
    the bias terms are still computed once per row. Soft data keeps a row per example.
    """
    n = len(s)
    every = np.arange(n)
    bits = np.concatenate([s, y], 1)
    if bits.shape[1] > 62 or not np.all((bits == 0) | (bits == 1)):
        return s, y, (np.ones(n) if utility is None else utility), np.ones(n), every, every
    keys = bits.astype(np.int64) @ (np.int64(1) << np.arange(bits.shape[1], dtype=np.int64))
    _, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True,
                                          return_counts=True)
    if utility is None:
        rows = np.arange(len(first))
        return s[first], y[first], np.ones(len(first)), counts.astype(np.float64), rows, inverse
    return s[first], y[first], utility, np.ones(n), inverse, every


def _solve(s, y, p, c, r, pi, eps_r, eps_d, max_weight, mean_weight, max_iterations):
    """Dual decomposition. Rows s (R, K), y (R, M); members with anchors p, counts c
    and row index r (see `_group`). Returns (q per member, rounds, iterations)."""
    from scipy import optimize

    k, m, num_rows = s.shape[1], y.shape[1], len(s)
    c = c / c.sum()
    identity = len(r) == num_rows and np.array_equal(r, np.arange(num_rows))

    def per_row(values):  # member values -> sums per row
        return values if identity else np.bincount(r, values, minlength=num_rows)

    use_r, use_d, use_eta = eps_r is not None, eps_d is not None and m > 0, mean_weight is not None
    er = _MARGIN * eps_r if use_r else 0.0
    # eps_d: a scalar, or one bound per label / proxy column (M,), repeated over groups.
    eps_d_cols = np.broadcast_to(np.asarray(eps_d if use_d else 0.0, np.float64), (m,))
    ed = np.tile(_MARGIN * eps_d_cols, k)
    sizes = [k if use_r else 0] * 2 + [k * m if use_d else 0] * 2 + [1 if use_eta else 0]
    splits = np.cumsum(sizes)[:-1]
    s_rep = s - pi
    row_mass = per_row(c)
    centre_s, centre_y = pi.copy() if use_r else row_mass @ s, row_mass @ y
    x = np.zeros(sum(sizes))
    bounds = [(0, None)] * (sum(sizes) - use_eta) + [(None, None)] * use_eta
    rounds = iterations = 0

    for rounds in range(1, _ROUNDS + 1):
        s_c, y_c = s - centre_s, y - centre_y

        def shift(x):
            """mu . v + nu per member: what the duals x subtract from the anchors."""
            r_plus, r_minus, d_plus, d_minus, nu = np.split(x, splits)
            t = nu.sum() - er * (r_plus.sum() + r_minus.sum())
            if use_d:
                t -= ed @ (d_plus + d_minus)
            t = np.full(num_rows, t)
            if use_r:
                t += np.einsum("nk,k->n", s_rep, r_plus - r_minus)
            if use_d:
                t += np.einsum("nr,nr->n", s_c @ (d_plus - d_minus).reshape(k, m), y_c)
            return t if identity else t[r]

        def neg_dual(x):
            t = shift(x)
            q = np.clip(p - t, 0.0, max_weight)
            cq = c * q
            mass, row_cq = cq.sum(), per_row(cq)
            value = (c * (0.5 * (q - p) ** 2 + q * t)).sum() - (x[-1] * mean_weight if use_eta else 0.0)
            grads = []
            if use_r:
                rep = row_cq @ s_rep
                grads += [rep - er * mass, -rep - er * mass]
            if use_d:
                cov = (s_c.T @ (row_cq[:, None] * y_c)).ravel()
                grads += [cov - ed * mass, -cov - ed * mass]
            if use_eta:
                grads.append([mass - mean_weight])
            return -value, -np.concatenate(grads)

        if x.size:
            result = optimize.minimize(neg_dual, x, jac=True, method="L-BFGS-B", bounds=bounds,
                                       options={"maxiter": max_iterations, "ftol": 1e-15, "gtol": 1e-11})
            x, iterations = result.x, iterations + result.nit
        q = np.clip(p - shift(x), 0.0, max_weight)
        if c @ q <= 1e-9 * (c @ p):
            break
        stats = _stats(s, y, per_row(c * q))  # effective_size is not used here
        if not use_d or np.all(np.abs(stats["association"]) <= eps_d_cols):
            break
        centre_s, centre_y = stats["representation"], stats["label_rate"]
    return q, rounds, iterations


def _violations(stats, pi, eps_r, eps_d):
    out = []
    if eps_r is not None:
        gap = np.abs(stats["representation"] - pi)
        out += [f"attribute group {k}: proportion {stats['representation'][k]:.4f} vs target "
                f"{pi[k]:.4f} +- {eps_r:.4g}" for k in np.flatnonzero(gap > eps_r + 1e-9)]
    if eps_d is not None and stats["association"].size:
        cov = stats["association"]
        out += [f"attribute group {k} x label {r}: covariance {cov[k, r]:+.4f} beyond +-{eps_d:.4g}"
                for k, r in zip(*np.nonzero(np.abs(cov) > eps_d + 1e-9))]
    return out


_SAME = "association_bound"


def balance_weights(attributes, labels=None, representation_targets=None, *, proxies=None,
                    representation_tolerance=0.01, association_bound=0.01, proxy_bound=_SAME,
                    max_weight=1.0, mean_weight=None, utility=None, max_iterations=2000):
    """M4 weights: representation within tolerance of targets, |covariance| bounded.

    Args:
        attributes: (N, K) sensitive-attribute indicators in [0, 1] (one-hot, multi-hot
            for overlapping groups, or soft), or (N,) integer group codes.
        labels: (N, M) label indicators in [0, 1] (the concepts the data should not
            associate with the sensitive attribute, e.g. occupations), (N,) integer
            codes, or None (no association constraints on labels).
        proxies: optional (N, P) indicators in [0, 1] (or (N,) codes) of proxy
            variables: concepts correlated with the sensitive attribute that a model
            could use in its place (reference/papers.md h.1: "optionally 'proxies' --
            concepts correlated with s"). As in the paper they are not sensitive groups
            (no representation targets) but join the second-order constraints:
            |Cov_w(s_k, proxy_p)| <= proxy_bound, so the sensitive attribute cannot be
            recovered from them. They are reported apart from the labels (the paper:
            proxies help representation bias but can cost association bias, as they
            compete with the labels for the same weights). None (default) = the
            behaviour without proxies.
        representation_targets: (K,) target proportions pi_k, a scalar for every group,
            or None: uniform 1/K (needs groups that partition the data); when
            representation_tolerance is None, None means the data's own proportions.
        representation_tolerance: eps_R in |E_w[s_k] - pi_k| <= eps_R; None = no
            representation constraints.
        association_bound: eps_D in |Cov_w(s_k, y_r)| <= eps_D; None = no association
            constraints on the labels.
        proxy_bound: the bound on |Cov_w(s_k, proxy_p)|; default association_bound;
            None = proxies are only reported, not constrained.
        max_weight: upper end of the weights; 1 (default) makes them keep
            probabilities, as in the paper (down-weighting only); > 1 lets rare
            examples count more than once.
        mean_weight: optional size constraint mean(w) = eta (the paper keeps 90%).
        utility: optional (N,) preferred weight of each example (e.g. a quality score;
            the anchor of the quadratic regulariser); default all ones.
        max_iterations: L-BFGS-B iterations per re-centring round.
    Returns:
        (weights, report): float64 (N,) weights in [0, max_weight], and a BalanceReport
        with the statistics before and after.
    Raises:
        ValueError: bad shapes, dtypes, NaNs or arguments, or infeasible constraints.
    """
    num_groups = len(representation_targets) if np.ndim(representation_targets) == 1 else None
    s, y = _inputs(attributes, labels, num_groups)
    if isinstance(proxy_bound, str) and proxy_bound == _SAME:
        proxy_bound = association_bound
    if proxies is None:
        z = np.zeros((len(s), 0))
    else:
        z = _indicators(proxies, "proxies")
        if len(z) != len(s):
            raise ValueError(f"attributes and proxies disagree on N: {len(s)} vs {len(z)}.")
    for name, value in (("representation_tolerance", representation_tolerance),
                        ("association_bound", association_bound), ("proxy_bound", proxy_bound)):
        if value is not None and not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0 or None, got {value}.")
    if not (np.isfinite(max_weight) and max_weight > 0):
        raise ValueError(f"max_weight must be a positive number, got {max_weight}.")
    if mean_weight is not None and not 0 < mean_weight <= max_weight:
        raise ValueError(f"mean_weight must lie in (0, max_weight={max_weight}], got {mean_weight}.")
    if utility is not None:
        utility = np.asarray(utility, np.float64)
        if utility.shape != (len(s),) or not np.all(np.isfinite(utility)) or utility.min() < 0 \
                or utility.sum() <= 0:
            raise ValueError(f"utility must be a ({len(s)},) array of finite, non-negative values, "
                             f"not all zero; got shape {utility.shape}.")
    eps_r, eps_d = representation_tolerance, association_bound
    pi = _targets(representation_targets, s, eps_r is not None)
    _check_feasible(s, pi, eps_r, max_weight, mean_weight)

    # The solver sees the constrained columns: labels (bound eps_d) and proxies (proxy_bound).
    columns, bounds = [], []
    if eps_d is not None:
        columns.append(y)
        bounds.append(np.full(y.shape[1], float(eps_d)))
    if proxy_bound is not None:
        columns.append(z)
        bounds.append(np.full(z.shape[1], float(proxy_bound)))
    y_solve = np.concatenate(columns, 1) if columns else np.zeros((len(s), 0))
    eps_solve = np.concatenate(bounds) if columns and y_solve.shape[1] else None
    rows_s, rows_y, anchors, counts, row, member = _group(s, y_solve, utility)
    q, rounds, iterations = _solve(rows_s, rows_y, anchors, counts, row, pi, eps_r, eps_solve,
                                   max_weight, mean_weight, max_iterations)
    if counts @ q <= 1e-9 * (counts @ anchors):
        raise ValueError("the constraints are jointly infeasible: only weighting every example by 0 "
                         "satisfies them; relax the tolerances or the targets.")
    weights = q[member]
    before, after = _stats(s, y, np.ones(len(s))), _stats(s, y, weights)
    problems = _violations(after, pi, eps_r, eps_d)
    proxy_before = proxy_after = None
    if proxies is not None:
        proxy_before = _stats(s, z, np.ones(len(s)))["association"]
        proxy_after = _stats(s, z, weights)["association"]
        if proxy_bound is not None:
            problems += [p.replace("label", "proxy") for p in
                         _violations({"association": proxy_after}, pi, None, proxy_bound)]
    if mean_weight is not None and abs(weights.mean() - mean_weight) > 1e-3 * mean_weight:
        problems.insert(0, f"mean weight {weights.mean():.4f} instead of mean_weight={mean_weight}")
    if problems:
        raise ValueError(f"the constraints cannot be met with max_weight={max_weight}"
                         + (f" and mean_weight={mean_weight}" if mean_weight is not None else "")
                         + ": " + "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""))
    (rep_before, cov_before), (rep_after, cov_after) = _gaps(before, pi), _gaps(after, pi)
    def gap(cov):
        return float(np.abs(cov).max()) if cov is not None and cov.size else 0.0
    report = BalanceReport(before, after, pi, eps_r, eps_d, rep_before, rep_after, cov_before,
                           cov_after, float(weights.mean()), len(rows_s), rounds, iterations,
                           proxy_bound if proxies is not None else None, proxy_before, proxy_after,
                           gap(proxy_before), gap(proxy_after))
    return weights, report


# --------------------------------------------------------------------------- sampling


def balanced_subsample(weights, size, seed=None):
    """`size` distinct example indices, each included with probability proportional to
    its weight (capped at 1; the capped ones are always kept).

    Systematic probability-proportional-to-size sampling over a random order: the
    inclusion probabilities are exactly min(1, c * w_i) with c set so they sum to
    `size`, hence the subsample's statistics match the weighted ones in expectation.
    Zero-weight examples are never drawn.

    Args:
        weights: (N,) non-negative weights, e.g. from `balance_weights`.
        size: number of examples to draw, at most the number of positive weights.
        seed: int or None, for `np.random.default_rng`.
    Returns:
        int64 (size,) sorted indices into the N examples.
    """
    w = _check_weights(weights)
    positive = int((w > 0).sum())
    if int(size) != size or not 0 <= size <= positive:
        raise ValueError(f"size must be an integer in [0, {positive}] (the examples with "
                         f"positive weight), got {size}.")
    size = int(size)
    if size == 0:
        return np.zeros(0, np.int64)
    # The `certain` heaviest examples get probability 1, for the smallest `certain` at
    # which the others, scaled to sum to size - certain, stay <= 1.
    by_weight = np.argsort(-w, kind="stable")
    ordered = w[by_weight]
    tail = np.cumsum(ordered[::-1])[::-1]  # tail[j] = sum of ordered[j:]
    j = np.arange(size)
    certain = int(np.argmax((size - j) * ordered[:size] <= tail[:size]))
    prob = w * ((size - certain) / tail[certain])
    prob[by_weight[:certain]] = 1.0
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(w))
    edges = np.cumsum(prob[order])
    points = rng.uniform() + np.arange(size) * (edges[-1] / size)
    picked = order[np.minimum(np.searchsorted(edges, points, side="right"), len(w) - 1)]
    return np.sort(picked).astype(np.int64)


def weighted_dataset(dataset, weights, *, mode="resample", seed=0):
    """Applies M4 weights to a tf.data.Dataset whose i-th element is example i.

    mode="resample": example i appears floor(w_i) times plus once more with
        probability w_i - floor(w_i) (with max_weight=1: kept with probability w_i,
        the paper's Bernoulli subsampling). Deterministic given `seed`: the same
        examples on every pass.
    mode="sample_weight": elements become (x, y, w_i) for `model.fit`; (x, y, sw)
        becomes (x, y, sw * w_i) and any other element x becomes (x, None, w_i).

    Args:
        dataset: unbatched tf.data.Dataset with N elements (checked when its
            cardinality is known).
        weights: (N,) non-negative weights.
        seed: int, for the stateless per-example draws of mode="resample".
    Returns:
        tf.data.Dataset.
    """
    import tensorflow as tf

    if mode not in ("resample", "sample_weight"):
        raise ValueError(f'mode must be "resample" or "sample_weight", got {mode!r}.')
    w = _check_weights(weights)
    cardinality = int(dataset.cardinality())
    if cardinality >= 0 and cardinality != len(w):
        raise ValueError(f"dataset has {cardinality} elements but weights has {len(w)}.")
    table = tf.constant(w, tf.float32)
    if mode == "sample_weight":
        def attach(i, element):
            weight = table[i]
            if isinstance(element, tuple) and len(element) == 3:
                return element[0], element[1], tf.cast(element[2], tf.float32) * weight
            if isinstance(element, tuple) and len(element) == 2:
                return element[0], element[1], weight
            return element, None, weight
        return dataset.enumerate().map(attach, num_parallel_calls=tf.data.AUTOTUNE)
    seed = tf.constant(int(seed), tf.int64)

    def copies(i, element):
        whole = tf.floor(table[i])
        extra = tf.random.stateless_uniform([], seed=tf.stack([seed, i])) < table[i] - whole
        count = tf.cast(whole, tf.int64) + tf.cast(extra, tf.int64)
        return tf.data.Dataset.from_tensors(element).repeat(count)
    return dataset.enumerate().flat_map(copies)
