"""Deep brain stimulation (DBS) network analyses.

Volumes of activated tissue (VATs) as spheres around the active contacts,
outcome-weighted DBS networks, R-maps, leave-one-out outcome prediction and the
convergent (coordinate-overlap x DBS) network, following the design of Ji et
al. 2025 (Nat Commun, doi:10.1038/s41467-025-57392-7), where each of 21
patients' VAT network was weighted by the patient's % seizure reduction.

Patient networks are arrays of shape ``(n_patients, V)``: one row per patient
over the voxels (or trailing 3-D shape) of an analysis grid.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from bids_cnm.analyses.roi import sphere_mask
from bids_cnm.analyses.validation import (
    network_data,
    permutation_p,
    spatial_correlation,
)
from bids_cnm.errors import InputDataError

LOGGER = logging.getLogger(__name__)

__all__ = [
    "VAT_MODELS",
    "convergent_network",
    "leave_one_out_prediction",
    "leave_one_out_similarity",
    "outcome_weighted_network",
    "rmap",
    "rmap_permutation",
    "vat_from_contacts",
    "vat_radius_mm",
    "vat_table",
    "zscore_map",
]

VAT_MODELS = ("kuncel2008", "maedler2012", "dembek2017")

# Kuncel et al. 2008, eq. 1: V = k r^2 + V0 (r in mm, V in volts).
KUNCEL_K = 0.22  # V / mm^2
KUNCEL_V0 = 0.1  # V
# Maedler & Coenen 2012, eq. 3 fit, as coded in Lead-DBS (ea_genvat_maedler.m):
# U = k3 r^2 + (k1 + k4 Im) r, U in V, Im in ohm, r in mm.
MAEDLER_K1 = -1.0473
MAEDLER_K3 = 0.2786
MAEDLER_K4 = 0.0009856
# Dembek et al. 2017 point-source model with Lead-DBS defaults (ea_genvat_dembek.m):
# r = (pw / pw_ref)^0.3 * sqrt(0.72 * I / E_thr), I in A, E_thr in V/m, r in m.
DEMBEK_E_THRESHOLD_V_PER_MM = 0.2
DEMBEK_PW_REF_US = 60.0


def vat_radius_mm(
    amplitude: float | np.ndarray,
    unit: str = "mA",
    pulse_width_us: float | np.ndarray = 60.0,
    impedance_ohm: float | np.ndarray = 1000.0,
    model: str = "kuncel2008",
) -> float | np.ndarray:
    """Radius (mm) of a spherical volume of activated tissue.

    Models (``model``):

    ``kuncel2008`` (default)
        Kuncel AM, Cooper SE, Grill WM. A method to estimate the spatial
        extent of activation in thalamic deep brain stimulation. Clin
        Neurophysiol 2008;119(9):2148-2158, eq. 1 (fit to thalamic DBS):
        ``r = sqrt((V - 0.1) / 0.22)`` with V in volts and r in mm; ``r = 0``
        for ``V <= 0.1`` V (below the fitted threshold).  No pulse-width or
        impedance term.  The same constants are Lead-DBS's "Kuncel 2008" VAT.
    ``maedler2012``
        Maedler B, Coenen VA. Explaining clinical effects of deep brain
        stimulation through simplified target-specific modeling of the volume
        of activated tissue. AJNR Am J Neuroradiol 2012;33(6):1072-1080, eq. 3,
        with the constants of Lead-DBS's "Maedler 2012" VAT: the positive root
        of ``V = k3 r^2 + (k1 + k4 R) r``, ``k1 = -1.0473``, ``k3 = 0.2786``,
        ``k4 = 0.0009856``, R the impedance in ohm; ``r = 0`` for ``V = 0``.
    ``dembek2017``
        Point-source model of Dembek TA et al. Probabilistic mapping of deep
        brain stimulation effects in essential tremor. NeuroImage Clin
        2017;13:164-173, with Lead-DBS's defaults ("Dembek 2017" VAT):
        ``r = (pw / 60 us)^0.3 * sqrt(0.72 * I / E)`` with I in A, the field
        threshold E = 0.2 V/mm = 200 V/m, r in m (x1000 for mm).  The only
        model that uses ``pulse_width_us``.

    Unit conversion: a current in mA becomes a voltage ``V = I * R`` (Ohm's law,
    ``I`` in A, ``R = impedance_ohm``) for the voltage models; a voltage becomes
    a current ``I = V / R`` for ``dembek2017``.  With the default 1000 ohm,
    1 mA corresponds to 1 V.

    The constants of ``kuncel2008`` were checked against the published
    equation as reproduced by Lead-DBS; those of ``maedler2012`` and
    ``dembek2017`` are reproduced from Lead-DBS's implementation.

    Parameters
    ----------
    amplitude : float or ndarray
        Stimulation amplitude magnitude (>= 0).
    unit : {'mA', 'V'}
        Unit of ``amplitude``.
    pulse_width_us : float or ndarray
        Pulse width in microseconds (``dembek2017`` only).
    impedance_ohm : float or ndarray
        Electrode impedance in ohm, used for the unit conversion and by
        ``maedler2012``.
    model : {'kuncel2008', 'maedler2012', 'dembek2017'}
        The amplitude-to-radius model.

    Returns
    -------
    float or ndarray
        Radius in mm (0 where the amplitude is below the model's threshold).
    """
    amp = np.asarray(amplitude, dtype=float)
    pw = np.asarray(pulse_width_us, dtype=float)
    imp = np.asarray(impedance_ohm, dtype=float)
    if np.any(~np.isfinite(amp)) or np.any(amp < 0):
        raise ValueError(f"amplitude must be finite and >= 0 (its magnitude), got {amplitude}")
    if np.any(~np.isfinite(imp)) or np.any(imp <= 0):
        raise ValueError(f"impedance must be > 0 ohm, got {impedance_ohm}")
    unit_l = str(unit).strip().lower()
    if unit_l not in ("ma", "v"):
        raise ValueError(f"unit must be 'mA' or 'V', got {unit!r}")
    if model not in VAT_MODELS:
        raise ValueError(f"model must be one of {VAT_MODELS}, got {model!r}")

    if model == "dembek2017":
        if np.any(~np.isfinite(pw)) or np.any(pw <= 0):
            raise ValueError(f"pulse width must be > 0 us, got {pulse_width_us}")
        current_a = amp / 1000.0 if unit_l == "ma" else amp / imp
        e_v_per_m = DEMBEK_E_THRESHOLD_V_PER_MM * 1000.0
        r = (pw / DEMBEK_PW_REF_US) ** 0.3 * np.sqrt(0.72 * current_a / e_v_per_m) * 1000.0
    else:
        volts = amp / 1000.0 * imp if unit_l == "ma" else amp
        if model == "kuncel2008":
            r = np.sqrt(np.clip(volts - KUNCEL_V0, 0.0, None) / KUNCEL_K)
        else:
            b = MAEDLER_K1 + MAEDLER_K4 * imp
            r = (-b + np.sqrt(b**2 + 4 * MAEDLER_K3 * volts)) / (2 * MAEDLER_K3)
            r = np.where(volts > 0, r, 0.0)
    r = np.asarray(r, dtype=float)
    return float(r) if r.ndim == 0 else r


_CONTACT_COLUMNS = ("patient", "side", "x", "y", "z", "amplitude")


def vat_table(
    table: pd.DataFrame,
    model: str = "kuncel2008",
    unit: str | None = None,
    source: str = "DBS contacts table",
) -> pd.DataFrame:
    """Validate a contacts table and add the VAT radius of each row.

    Parameters
    ----------
    table : DataFrame
        One row per active contact: ``patient, side, x, y, z, amplitude``
        (MNI mm), optional ``unit`` ('mA'/'V'), ``pulse_width_us``,
        ``impedance_ohm``.
    model : str
        See :func:`vat_radius_mm`.
    unit : {'mA', 'V'}, optional
        Unit for all rows when the table has no ``unit`` column.
    source : str
        File name for error messages.

    Returns
    -------
    DataFrame
        A copy with column ``radius_mm``.

    Raises
    ------
    InputDataError
        On missing columns or a bad value (message names file, row, column).
    """
    missing = [c for c in _CONTACT_COLUMNS if c not in table.columns]
    if missing:
        raise InputDataError(
            f"{source}: missing column(s) {missing}; required: {', '.join(_CONTACT_COLUMNS)}"
        )
    if "unit" not in table.columns and unit is None:
        raise InputDataError(
            f"{source}: the amplitude unit is unknown; add a 'unit' column ('mA' or 'V') "
            "or set the unit option"
        )
    out = table.copy().reset_index(drop=True)
    out["patient"] = out["patient"].astype(str)
    if "unit" not in out.columns:
        out["unit"] = unit
    if "pulse_width_us" not in out.columns:
        out["pulse_width_us"] = 60.0
    if "impedance_ohm" not in out.columns:
        out["impedance_ohm"] = 1000.0
    for column in ("x", "y", "z", "amplitude", "pulse_width_us", "impedance_ohm"):
        numeric = pd.to_numeric(out[column], errors="coerce")
        bad = np.flatnonzero(~np.isfinite(numeric.to_numpy(dtype=float)))
        if bad.size:
            raise InputDataError(
                f"{source}, row {bad[0] + 2}, column '{column}': "
                f"{out[column].iloc[bad[0]]!r} is not a number; give a numeric value"
            )
        out[column] = numeric.astype(float)
    radii = np.empty(len(out))
    for r, row in out.iterrows():
        try:
            radii[r] = vat_radius_mm(
                row["amplitude"], row["unit"], row["pulse_width_us"], row["impedance_ohm"], model
            )
        except ValueError as exc:
            raise InputDataError(f"{source}, row {r + 2}: {exc}") from exc
    out["radius_mm"] = radii
    return out


def vat_from_contacts(
    table: pd.DataFrame,
    shape: Sequence[int],
    affine: np.ndarray,
    model: str = "kuncel2008",
    unit: str | None = None,
    source: str = "DBS contacts table",
) -> dict[str, np.ndarray]:
    """Spherical VAT masks per patient, left and right (and all contacts) united.

    Rows whose radius is 0 (amplitude at or below the model's threshold, i.e.
    a contact switched off) contribute nothing.

    Parameters
    ----------
    table : DataFrame
        See :func:`vat_table`.
    shape : sequence of int
        Grid shape.
    affine : ndarray, shape (4, 4)
        Grid affine.
    model : str
        See :func:`vat_radius_mm`.
    unit : {'mA', 'V'}, optional
        Unit for all rows when the table has no ``unit`` column.
    source : str
        File name for error messages.

    Returns
    -------
    dict of str to ndarray of bool
        Patient to VAT mask, in order of first appearance.

    Raises
    ------
    InputDataError
        On a bad table, or a patient without any active contact.
    """
    vt = vat_table(table, model=model, unit=unit, source=source)
    masks: dict[str, np.ndarray] = {}
    for patient, rows in vt.groupby("patient", sort=False):
        mask = np.zeros(tuple(int(s) for s in shape[:3]), dtype=bool)
        for r, row in rows.iterrows():
            if row["radius_mm"] <= 0:
                LOGGER.info(
                    "%s, row %d: amplitude below the VAT threshold; skipped", source, r + 2
                )
                continue
            try:
                mask |= sphere_mask(
                    row[["x", "y", "z"]].to_numpy(dtype=float), 2 * row["radius_mm"], shape, affine
                )
            except InputDataError as exc:
                raise InputDataError(f"{source}, row {r + 2}: {exc}") from exc
        if not mask.any():
            raise InputDataError(
                f"{source}: patient '{patient}' has no contact with an amplitude above the "
                "VAT threshold; check the amplitudes and units or drop the patient"
            )
        masks[str(patient)] = mask
    return masks


def _as_matrix(
    networks: np.ndarray, outcomes: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, tuple]:
    nets = np.asarray(networks, dtype=float)
    out = np.asarray(outcomes, dtype=float).ravel()
    if nets.ndim < 2 or nets.shape[0] != out.size:
        raise ValueError(
            f"networks must be (n_patients, ...) with one row per outcome; got {nets.shape} "
            f"and {out.size} outcomes"
        )
    if not np.all(np.isfinite(out)):
        raise ValueError("outcomes must be finite")
    return nets.reshape(nets.shape[0], -1), out, nets.shape[1:]


def outcome_weighted_network(
    networks: np.ndarray, outcomes: Sequence[float], normalize: str = "n"
) -> np.ndarray:
    """Outcome-weighted average of patient networks (the "DBS network").

    The reference study weighted each patient's VAT network by the patient's
    % seizure reduction and averaged: ``sum_i o_i N_i / n`` (``normalize='n'``,
    the default).  ``normalize='sum'`` gives the weighted mean
    ``sum_i o_i N_i / sum_i o_i`` and ``'abs_sum'`` divides by
    ``sum_i |o_i|`` (safe when outcomes have mixed signs).

    Parameters
    ----------
    networks : ndarray, shape (n_patients, ...)
        Patient networks.
    outcomes : array-like, shape (n_patients,)
        Outcomes (e.g. % seizure reduction).
    normalize : {'n', 'sum', 'abs_sum'}
        Denominator.

    Returns
    -------
    ndarray, shape networks.shape[1:]
        The weighted network (NaN where a patient's network is NaN).
    """
    nets, o, shape = _as_matrix(networks, outcomes)
    total = o @ nets
    if normalize == "n":
        den = o.size
    elif normalize == "sum":
        den = o.sum()
    elif normalize == "abs_sum":
        den = np.abs(o).sum()
    else:
        raise ValueError("normalize must be 'n', 'sum' or 'abs_sum'")
    if den == 0:
        raise ValueError(f"the outcomes sum to 0; normalize='{normalize}' is undefined")
    return (total / den).reshape(shape)


def _standardize_columns(x: np.ndarray) -> np.ndarray:
    """Centre columns and scale them to unit norm (NaN for constant columns)."""
    xc = x - x.mean(axis=0)
    norm = np.sqrt((xc**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, xc / norm, np.nan)


def rmap(networks: np.ndarray, outcomes: Sequence[float]) -> np.ndarray:
    """Voxel-wise Pearson correlation of network values with outcomes (R-map).

    Parameters
    ----------
    networks : ndarray, shape (n_patients, ...)
        Patient networks.
    outcomes : array-like, shape (n_patients,)
        Outcomes.

    Returns
    -------
    ndarray, shape networks.shape[1:]
        r per voxel; NaN where the voxel is constant or not finite across patients.
    """
    nets, o, shape = _as_matrix(networks, outcomes)
    if o.size < 3:
        raise ValueError("an R-map needs >= 3 patients")
    if np.std(o) == 0:
        raise ValueError("outcomes are constant; correlations are undefined")
    z = _standardize_columns(nets)
    y = (o - o.mean()) / np.linalg.norm(o - o.mean())
    return np.clip(y @ z, -1, 1).reshape(shape)


def rmap_permutation(
    networks: np.ndarray,
    outcomes: Sequence[float],
    n_perm: int = 1000,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """R-map with two-sided permutation p-values (outcome shuffles).

    Parameters
    ----------
    networks : ndarray, shape (n_patients, ...)
        Patient networks.
    outcomes : array-like, shape (n_patients,)
        Outcomes.
    n_perm : int
        Number of outcome permutations.
    rng : numpy Generator, int or None
        Random generator or seed.

    Returns
    -------
    r : ndarray
        The R-map.
    p_uncorrected : ndarray
        ``(#{|r_perm(v)| >= |r(v)|} + 1) / (n_perm + 1)`` per voxel.
    p_fwe : ndarray
        Family-wise corrected by the maximum statistic:
        ``(#{max_v |r_perm| >= |r(v)|} + 1) / (n_perm + 1)``.
        NaN where r is NaN.
    """
    nets, o, shape = _as_matrix(networks, outcomes)
    rng = np.random.default_rng(rng)
    r = rmap(nets, o).ravel()
    z = _standardize_columns(nets)
    valid = np.isfinite(r)
    zv = z[:, valid]
    abs_r = np.abs(r[valid])
    y = (o - o.mean()) / np.linalg.norm(o - o.mean())
    tol = 1e-12
    exceed = np.zeros(abs_r.size, dtype=np.int64)
    max_null = np.empty(n_perm)
    chunk = max(1, 20_000_000 // max(zv.shape[1], 1))
    for start in range(0, n_perm, chunk):
        stop = min(start + chunk, n_perm)
        perms = np.argsort(rng.random((stop - start, o.size)), axis=1)
        null = np.abs(y[perms] @ zv)
        exceed += (null >= abs_r - tol).sum(axis=0)
        max_null[start:stop] = null.max(axis=1) if null.shape[1] else 0.0
    p_unc = np.full(r.size, np.nan)
    p_fwe = np.full(r.size, np.nan)
    p_unc[valid] = (exceed + 1) / (n_perm + 1)
    sorted_max = np.sort(max_null)
    n_ge = n_perm - np.searchsorted(sorted_max, abs_r - tol, side="left")
    p_fwe[valid] = (n_ge + 1) / (n_perm + 1)
    return r.reshape(shape), p_unc.reshape(shape), p_fwe.reshape(shape)


def _centered_gram(nets: np.ndarray) -> np.ndarray:
    centered = nets - nets.mean(axis=1, keepdims=True)
    return centered @ centered.T


def _loo_similarity_from_gram(gram: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Pearson r of each patient's network with the LOO weighted network.

    With centred networks N_i and total T = sum_j o_j N_j, the LOO network is
    (T - o_i N_i)/(n-1); the positive scale does not change r.  Every needed
    inner product is in the Gram matrix G = N N^T:
    cov_i = (G o)_i - o_i G_ii,
    |T - o_i N_i|^2 = o'Go - 2 o_i (G o)_i + o_i^2 G_ii.
    ``weights`` may be (n,) or a batch (B, n).
    """
    w = np.atleast_2d(weights)
    gw = w @ gram  # gram is symmetric
    diag = np.diag(gram)
    quad = np.einsum("bi,bi->b", gw, w)
    cov = gw - w * diag
    norm2 = quad[:, None] - 2 * w * gw + w**2 * diag
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = cov / np.sqrt(np.clip(norm2, 0, None) * diag)
    return sim if np.ndim(weights) == 2 else sim[0]


def leave_one_out_similarity(
    networks: np.ndarray, outcomes: Sequence[float], mask: np.ndarray | None = None
) -> np.ndarray:
    """Spatial Pearson r of each patient's network with the others' DBS network.

    The others' network is ``outcome_weighted_network`` without patient i,
    ``(sum_j o_j N_j - o_i N_i) / (n - 1)``.

    Parameters
    ----------
    networks : ndarray, shape (n_patients, ...)
        Patient networks.
    outcomes : array-like, shape (n_patients,)
        Outcomes (weights).
    mask : ndarray of bool, optional
        Voxels used (shape ``networks.shape[1:]``); voxels not finite in every
        patient are always dropped.

    Returns
    -------
    ndarray, shape (n_patients,)
        Similarities.
    """
    nets, o, _ = _masked(networks, outcomes, mask)
    return _loo_similarity_from_gram(_centered_gram(nets), o)


def _masked(networks, outcomes, mask):
    nets, o, shape = _as_matrix(networks, outcomes)
    keep = np.all(np.isfinite(nets), axis=0)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != tuple(shape) and mask.size != nets.shape[1]:
            raise ValueError(f"mask shape {mask.shape} does not match networks {shape}")
        keep &= mask.ravel()
    if keep.sum() < 3:
        raise ValueError("fewer than 3 voxels are finite in every patient (and in the mask)")
    if o.size < 4:
        raise ValueError("leave-one-out prediction needs >= 4 patients")
    return nets[:, keep], o, shape


def leave_one_out_prediction(
    networks: np.ndarray,
    outcomes: Sequence[float],
    mask: np.ndarray | None = None,
    n_perm: int = 1000,
    rng: np.random.Generator | int | None = None,
    patients: Sequence[str] | None = None,
    alternative: str = "greater",
) -> dict:
    """Leave-one-out prediction of outcome from network similarity.

    For each patient i, the DBS network of the other patients (outcome
    weighted, ``normalize='n'``) is correlated spatially (Pearson) with patient
    i's network; the similarities are then correlated with the outcomes.
    The permutation test shuffles the outcomes and rebuilds everything (the
    LOO networks depend on the outcomes); it is exact and vectorized through
    the patients' Gram matrix (see :func:`leave_one_out_similarity`).

    Parameters
    ----------
    networks : ndarray, shape (n_patients, ...)
        Patient networks.
    outcomes : array-like, shape (n_patients,)
        Outcomes.
    mask : ndarray of bool, optional
        Voxels used.
    n_perm : int
        Outcome permutations (0 to skip).
    rng : numpy Generator, int or None
        Random generator or seed.
    patients : sequence of str, optional
        Patient labels for the table.
    alternative : {'greater', 'less', 'two-sided'}
        For the permutation p (greater: more similar, better outcome).

    Returns
    -------
    dict
        ``r`` (Pearson similarity-outcome), ``p_parametric`` (two-sided,
        scipy.stats.pearsonr), ``p_permutation``, ``null`` (n_perm r values),
        ``table`` (DataFrame patient, outcome, similarity).
    """
    # scipy.stats (about 1 s to import) here only: the run's command line imports this
    # module through the plan's seeds (bids_cnm.analyses.plan_seeds)
    from scipy import stats

    nets, o, _ = _masked(networks, outcomes, mask)
    gram = _centered_gram(nets)
    if np.any(np.diag(gram) <= 0):
        raise ValueError("a patient's network is constant over the voxels used")
    sim = _loo_similarity_from_gram(gram, o)
    r, p_param = stats.pearsonr(sim, o)
    rng = np.random.default_rng(rng)
    null = np.empty(n_perm)
    chunk = 5000
    for start in range(0, n_perm, chunk):
        stop = min(start + chunk, n_perm)
        perms = np.argsort(rng.random((stop - start, o.size)), axis=1)
        w = o[perms]
        s = _loo_similarity_from_gram(gram, w)
        s_c = s - s.mean(1, keepdims=True)
        w_c = w - w.mean(1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            null[start:stop] = (s_c * w_c).sum(1) / np.sqrt((s_c**2).sum(1) * (w_c**2).sum(1))
    null = null[np.isfinite(null)]
    p_perm = permutation_p(float(r), null, alternative) if null.size else float("nan")
    labels = list(patients) if patients is not None else [str(i) for i in range(o.size)]
    table = pd.DataFrame({"patient": labels, "outcome": o, "similarity": sim})
    return {
        "r": float(r),
        "p_parametric": float(p_param),
        "p_permutation": float(p_perm),
        "null": null,
        "table": table,
    }


def zscore_map(values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """z-score a map over a mask: ``(v - mean) / sd`` (population SD, ddof=0).

    Parameters
    ----------
    values : ndarray or nibabel image
        The map.
    mask : ndarray of bool, optional
        Voxels defining mean and SD; default: all finite voxels.

    Returns
    -------
    ndarray
        Same shape; NaN outside the mask or where ``values`` is not finite.
    """
    v = network_data(values) if not isinstance(values, np.ndarray) else np.asarray(values, float)
    keep = np.isfinite(v)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != v.shape:
            raise ValueError(f"mask shape {mask.shape} differs from map shape {v.shape}")
        keep &= mask
    if keep.sum() < 2:
        raise ValueError("fewer than 2 finite voxels in the mask")
    mean, sd = v[keep].mean(), v[keep].std()
    if sd == 0:
        raise ValueError("the map is constant in the mask; it cannot be z-scored")
    out = np.full(v.shape, np.nan)
    out[keep] = (v[keep] - mean) / sd
    return out


def convergent_network(
    overlap: np.ndarray, dbs: np.ndarray, mask: np.ndarray | None = None
) -> dict:
    """Convergent network: the mean of the z-scored overlap and DBS networks.

    Parameters
    ----------
    overlap : ndarray or nibabel image
        Coordinate-network overlap map.
    dbs : ndarray or nibabel image
        DBS (outcome-weighted) network on the same grid.
    mask : ndarray of bool, optional
        Voxels for the z-scores and correlations.

    Returns
    -------
    dict
        ``network`` (array, NaN outside the mask), ``r_overlap`` and ``r_dbs``
        (Pearson r of the convergent network with each input; for Pearson
        both equal ``sqrt((1 + r_overlap_dbs) / 2)``) and ``r_overlap_dbs``.
    """
    a, b = network_data(overlap), network_data(dbs)
    if a.shape != b.shape:
        raise ValueError(f"overlap {a.shape} and DBS {b.shape} networks differ in shape")
    keep = np.isfinite(a) & np.isfinite(b)
    if mask is not None:
        keep &= np.asarray(mask, dtype=bool)
    conv = (zscore_map(a, keep) + zscore_map(b, keep)) / 2
    return {
        "network": conv,
        "r_overlap": spatial_correlation(conv, a, keep),
        "r_dbs": spatial_correlation(conv, b, keep),
        "r_overlap_dbs": spatial_correlation(a, b, keep),
    }
