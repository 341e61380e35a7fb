"""Quality-assurance figures of an image3 run: pictures to look at before trusting numbers.

Every ``*_figure`` function takes plain arrays, tables and WCS objects and
returns a `matplotlib.figure.Figure` drawn with the Agg canvas; nothing
here reads or writes files or touches ``pyplot``'s global state, so the
functions are safe in a batch job and in tests.  Save a figure with
``fig.savefig(path, dpi=...)``.

Figures
-------
* `mosaic_figure` – the ``_i2d`` with an asinh stretch and an RA/Dec grid.
* `footprints_figure` – the exposures' outlines on the sky.
* `tweakreg_figure` – fitted shifts as vectors, cross-match residuals and a
  table of matches, RMS, shift and rotation per exposure.
* `skymatch_figure` – sky level of each exposure as bars.
* `outlier_figure` – one exposure with its flagged outlier pixels marked.
* `segmentation_figure` – the mosaic next to its segmentation map.
* `magnitude_histogram_figure` – AB magnitudes of the catalog.
* `aperture_correction_figure` – the encircled-energy curve behind the
  catalog's aperture radii and corrections, and the stars that made it.
* `truth_flux_figure`, `truth_position_figure` – the catalog against the
  simulator's truth (see `match_catalogs`).

Two small computations feed the figures: `match_catalogs` (nearest-neighbour
sky matching) and `cross_match_residuals` (how well aligned exposures agree).
"""

import math
import warnings

import numpy as np
from astropy import units as u
from astropy.coordinates import Angle
from astropy.visualization import AsinhStretch, AsymmetricPercentileInterval, ImageNormalize
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Polygon
from scipy.spatial import cKDTree

from .dqflags import PIXEL
from .wcs_tools import to_tangent_plane

__all__ = [
    "tile_layout_figure",
    "display_normalization",
    "short_names",
    "match_catalogs",
    "cross_match_residuals",
    "mosaic_figure",
    "footprints_figure",
    "tweakreg_figure",
    "skymatch_figure",
    "outlier_figure",
    "segmentation_figure",
    "magnitude_histogram_figure",
    "aperture_correction_figure",
    "truth_flux_figure",
    "truth_position_figure",
    "message_figure",
]

#: Longest side, in pixels, of an image as drawn; larger images are binned.
MAX_DISPLAY_PIXELS = 1200
#: Most outlier pixels marked individually in `outlier_figure`.
MAX_MARKERS = 20000

_IMAGE_CMAP = colormaps["gray"].with_extremes(bad="#18243f")
# Nice grid spacings: arcsec of declination, seconds of time of right ascension.
_DEC_STEPS_ARCSEC = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1200, 1800,
                     3600, 7200, 18000, 36000)
_RA_STEPS_SECONDS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600,
                     900, 1200, 1800, 3600, 7200)
_TYPE_COLORS = {"star": "tab:blue", "galaxy": "tab:orange"}


# --------------------------------------------------------------------------
# Helpers


def _new_figure(figsize):
    """A Figure on an Agg canvas, with constrained layout."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _check_image(array, name):
    array = np.asarray(array)
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"{name} must be a non-empty 2-D array, got shape {array.shape}")
    return array


def _bin_factor(shape, max_pixels):
    return max(1, math.ceil(max(shape) / max_pixels))


def _binned(image, factor, *, reduce="mean"):
    """Block-reduce ``image`` by ``factor`` (NaN-aware mean, or max for labels/masks)."""
    if factor == 1:
        return image
    ny, nx = image.shape
    py, px = (-ny) % factor, (-nx) % factor
    if reduce == "mean":
        padded = np.pad(image.astype(np.float32), ((0, py), (0, px)), constant_values=np.nan)
        blocks = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(blocks, axis=(1, 3))
    padded = np.pad(image, ((0, py), (0, px)))
    blocks = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor)
    return blocks.max(axis=(1, 3))


def display_normalization(data, *, lower_percentile=3.0, upper_percentile=99.9, asinh_a=0.05):
    """Asinh display normalization of an astronomical image.

    Parameters
    ----------
    data : ndarray
        Image; non-finite values are ignored.
    lower_percentile, upper_percentile : float
        Percentiles of the finite pixels mapped to black and white.
    asinh_a : float
        Softening of the asinh stretch, in (0, 1]: smaller shows fainter
        structure.

    Returns
    -------
    astropy.visualization.ImageNormalize
        Maps data values onto [0, 1]; all-NaN images give a 0..1 range.
    """
    if not 0 <= lower_percentile < upper_percentile <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100, got "
                         f"lower_percentile={lower_percentile}, upper_percentile={upper_percentile}")
    if not 0 < asinh_a <= 1:
        raise ValueError(f"asinh_a must be in (0, 1], got {asinh_a}")
    finite = np.asarray(data)[np.isfinite(data)]
    if finite.size == 0:
        finite = np.array([0.0, 1.0])
    interval = AsymmetricPercentileInterval(lower_percentile, upper_percentile)
    vmin, vmax = interval.get_limits(finite)
    if not vmax > vmin:
        vmax = vmin + 1.0
    return ImageNormalize(vmin=vmin, vmax=vmax, stretch=AsinhStretch(a=asinh_a), clip=True, invalid=None)


def _show_image(ax, data, *, norm=None, factor=None):
    """Draw ``data`` in its own pixel coordinates (binned for display when large)."""
    ny, nx = data.shape
    factor = factor or _bin_factor(data.shape, MAX_DISPLAY_PIXELS)
    shown = _binned(data, factor)
    norm = norm or display_normalization(shown)
    # Normalize first: matplotlib would hand the norm a masked array whose
    # NaNs are already filled, and uncovered pixels would come out white.
    stretched = np.asarray(norm(shown), dtype=float)
    ax.imshow(np.ma.masked_invalid(stretched), origin="lower", cmap=_IMAGE_CMAP, vmin=0.0, vmax=1.0,
              interpolation="nearest", extent=(-0.5, nx - 0.5, -0.5, ny - 0.5))
    ax.set_xlim(-0.5, nx - 0.5)
    ax.set_ylim(-0.5, ny - 0.5)
    return norm


def short_names(names):
    """Exposure names without the prefix and suffix they all share.

    ``['jw01_00001_nrcb1', 'jw01_00002_nrcb1']`` gives ``['00001', '00002']``;
    prefixes and suffixes are cut only at ``_`` boundaries, and a single name
    is returned unchanged.
    """
    names = [str(n) for n in names]
    if len(names) < 2:
        return names
    prefix = names[0]
    for n in names[1:]:
        while not n.startswith(prefix):
            prefix = prefix[:-1]
    prefix = prefix[: prefix.rfind("_") + 1]
    rest = [n[len(prefix):] for n in names]
    suffix = rest[0]
    for n in rest[1:]:
        while not n.endswith(suffix):
            suffix = suffix[1:]
    cut = suffix.find("_")
    suffix = suffix[cut:] if cut >= 0 else ""
    short = [n[: len(n) - len(suffix)] if suffix else n for n in rest]
    return short if all(short) and len(set(short)) == len(short) else names


def _pixel_to_sky(wcs, x, y):
    """(RA, Dec) in degrees of pixels, without bounding-box masking."""
    transform = getattr(wcs, "forward_transform", None)
    if transform is not None:
        return transform(x, y)
    return wcs.pixel_to_world_values(x, y)


def _nice_step(span, steps, max_lines=6):
    for step in steps:
        if span / step <= max_lines:
            return step
    return steps[-1]


def _edge_crossings(values, positions, levels):
    """Where the 1-D ``values`` along an edge cross each level (linear interpolation)."""
    ticks = []
    for level in levels:
        d = values - level
        idx = np.nonzero((d[:-1] <= 0) != (d[1:] <= 0))[0]
        for i in idx[:1]:
            frac = d[i] / (d[i] - d[i + 1])
            ticks.append((positions[i] + frac * (positions[i + 1] - positions[i]), level))
    return ticks


def _ra_label(level_deg, step_seconds):
    decimals = max(0, -int(math.floor(math.log10(step_seconds)))) if step_seconds < 1 else 0
    return Angle(level_deg % 360, u.deg).to_string(unit=u.hourangle, sep=("h", "m", "s"),
                                                   precision=decimals, pad=True)


def _dec_label(level_deg, step_arcsec):
    decimals = max(0, -int(math.floor(math.log10(step_arcsec)))) if step_arcsec < 1 else 0
    return Angle(level_deg, u.deg).to_string(unit=u.deg, sep=("°", "′", "″"), precision=decimals,
                                             alwayssign=True, pad=True)


def _radec_axes(ax, wcs, shape, *, grid_points=41, color="#7fb3ff"):
    """Draw an RA/Dec grid over pixel axes and label the edges in sexagesimal.

    The WCS is evaluated on a coarse grid; lines of constant RA and Dec are
    its contours, and the tick labels sit where those lines cross the
    bottom and left edges (each coordinate goes on the edge it crosses
    most often, so rotated images are labelled sensibly).
    """
    ny, nx = shape
    xs = np.linspace(-0.5, nx - 0.5, grid_points)
    ys = np.linspace(-0.5, ny - 0.5, grid_points)
    gx, gy = np.meshgrid(xs, ys)
    ra, dec = (np.asarray(v, dtype=float) for v in _pixel_to_sky(wcs, gx, gy))
    if not (np.all(np.isfinite(ra)) and np.all(np.isfinite(dec))):
        ax.set_xlabel("x (pixel)")
        ax.set_ylabel("y (pixel)")
        return
    ra0 = ra[grid_points // 2, grid_points // 2]
    ra = ra0 + (ra - ra0 + 180.0) % 360.0 - 180.0  # continuous across RA = 0
    ra_step = _nice_step(np.ptp(ra) * 240.0, _RA_STEPS_SECONDS) / 240.0
    dec_step = _nice_step(np.ptp(dec) * 3600.0, _DEC_STEPS_ARCSEC) / 3600.0
    ra_levels = np.arange(math.ceil(ra.min() / ra_step), math.floor(ra.max() / ra_step) + 1) * ra_step
    dec_levels = np.arange(math.ceil(dec.min() / dec_step), math.floor(dec.max() / dec_step) + 1) * dec_step
    for values, levels in ((ra, ra_levels), (dec, dec_levels)):
        if len(levels):
            ax.contour(gx, gy, values, levels=np.unique(levels), colors=color, linewidths=0.6,
                       alpha=0.6, linestyles="-")
    edges = {"bottom": (xs, 0), "left": (ys, 1)}
    crossings = {}
    for name, values, levels in (("ra", ra, ra_levels), ("dec", dec, dec_levels)):
        crossings[name] = {
            "bottom": _edge_crossings(values[0, :], edges["bottom"][0], levels),
            "left": _edge_crossings(values[:, 0], edges["left"][0], levels),
        }
    normal = len(crossings["ra"]["bottom"]) + len(crossings["dec"]["left"])
    swapped = len(crossings["dec"]["bottom"]) + len(crossings["ra"]["left"])
    on_bottom, on_left = ("ra", "dec") if normal >= swapped else ("dec", "ra")
    fmt = {"ra": lambda v: _ra_label(v, ra_step * 240.0), "dec": lambda v: _dec_label(v, dec_step * 3600.0)}
    label = {"ra": "Right ascension (ICRS)", "dec": "Declination (ICRS)"}
    bottom = crossings[on_bottom]["bottom"]
    left = crossings[on_left]["left"]
    ax.set_xticks([p for p, _ in bottom], [fmt[on_bottom](v) for _, v in bottom])
    ax.set_yticks([p for p, _ in left], [fmt[on_left](v) for _, v in left])
    ax.tick_params(axis="y", labelrotation=90)
    for tick in ax.get_yticklabels():
        tick.set_verticalalignment("center")
    ax.set_xlabel(label[on_bottom])
    ax.set_ylabel(label[on_left])
    ax.set_xlim(-0.5, nx - 0.5)
    ax.set_ylim(-0.5, ny - 0.5)


def _robust_rms_2d(offsets):
    """RMS length of 2-D offsets from the MAD of each axis (insensitive to false matches)."""
    offsets = np.asarray(offsets, float).reshape(-1, 2)
    if not len(offsets):
        return float("nan")
    sigma = 1.4826 * np.median(np.abs(offsets - np.median(offsets, axis=0)), axis=0)
    return float(np.hypot(*sigma))


def _legend(ax, **kwargs):
    """A legend, only when something is labelled (no warning on empty plots)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def _sky_offset_axes(ax, corners, ref):
    """Limits (east to the left), equal aspect, grid and labels of a plot of
    tangent-plane offsets (arcsec) from ``ref`` framing the ``corners`` (RA, Dec)."""
    xi, eta = _tangent_offsets_arcsec(corners[:, 0], corners[:, 1], *ref)
    pad = 0.05 * max(np.ptp(xi), np.ptp(eta), 1e-3)
    ax.set_xlim(xi.max() + pad, xi.min() - pad)
    ax.set_ylim(eta.min() - pad, eta.max() + pad)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.set_xlabel("Δξ east (arcsec)")
    ax.set_ylabel("Δη north (arcsec)")


def _tangent_offsets_arcsec(ra, dec, ref_ra, ref_dec):
    xi, eta = to_tangent_plane(np.asarray(ra, float), np.asarray(dec, float), ref_ra, ref_dec)
    return np.asarray(xi) * 3600.0, np.asarray(eta) * 3600.0


def _mean_position(ra, dec):
    """Mean sky position of points (unit-vector mean, safe across RA = 0)."""
    ra, dec = np.radians(np.asarray(ra, float)), np.radians(np.asarray(dec, float))
    v = np.array([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)]).reshape(3, -1).mean(axis=1)
    return float(np.degrees(np.arctan2(v[1], v[0])) % 360.0), float(np.degrees(np.arctan2(v[2], np.hypot(v[0], v[1]))))


# --------------------------------------------------------------------------
# Computations that feed the figures


def match_catalogs(ra1, dec1, ra2, dec2, *, max_separation=0.2):
    """Nearest-neighbour match of two sky catalogs, one-to-one.

    Parameters
    ----------
    ra1, dec1 : array_like, shape (N,)
        First catalog (e.g. measured), degrees.
    ra2, dec2 : array_like, shape (M,)
        Second catalog (e.g. truth), degrees.
    max_separation : float
        Largest separation accepted, arcsec.

    Returns
    -------
    idx1, idx2 : ndarray of int, shape (K,)
        Matched rows of each catalog; each row of either catalog appears at
        most once (the closer pair wins).  Empty when nothing matches.
    dxi, deta : ndarray, shape (K,)
        Offset of catalog 1 from catalog 2 in the tangent plane at their
        mean position, arcsec (east, north).
    """
    if not max_separation > 0:
        raise ValueError(f"max_separation must be > 0 arcsec, got {max_separation}")
    ra1, dec1, ra2, dec2 = (np.atleast_1d(np.asarray(a, float)) for a in (ra1, dec1, ra2, dec2))
    if ra1.shape != dec1.shape or ra2.shape != dec2.shape:
        raise ValueError("ra and dec of a catalog must have the same length")
    empty = np.array([], dtype=int)
    if ra1.size == 0 or ra2.size == 0:
        return empty, empty, np.array([]), np.array([])
    ref = _mean_position(np.concatenate([ra1, ra2]), np.concatenate([dec1, dec2]))
    p1 = np.column_stack(_tangent_offsets_arcsec(ra1, dec1, *ref))
    p2 = np.column_stack(_tangent_offsets_arcsec(ra2, dec2, *ref))
    dist, idx2 = cKDTree(p2).query(p1, distance_upper_bound=max_separation)
    idx1 = np.nonzero(np.isfinite(dist))[0]
    idx2, dist = idx2[idx1], dist[idx1]
    order = np.argsort(dist, kind="stable")
    _, first = np.unique(idx2[order], return_index=True)
    keep = np.sort(order[first])
    idx1, idx2 = idx1[keep], idx2[keep]
    d = p1[idx1] - p2[idx2]
    return idx1, idx2, d[:, 0], d[:, 1]


def cross_match_residuals(positions, *, max_separation=0.3):
    """How far each exposure's sources lie from the same sources in the others.

    Parameters
    ----------
    positions : list of ndarray, each shape (N_i, 2)
        ``(RA, Dec)`` in degrees of each exposure's sources, through its
        final (aligned) WCS.
    max_separation : float
        Largest separation of a match, arcsec.

    Returns
    -------
    list of ndarray, each shape (K_i, 2)
        For each exposure, the ``(xi, eta)`` offsets in arcsec (east, north)
        of its sources from their nearest neighbour among all *other*
        exposures' sources.  Empty (0, 2) arrays where nothing matches.
    """
    if not max_separation > 0:
        raise ValueError(f"max_separation must be > 0 arcsec, got {max_separation}")
    positions = [np.asarray(p, float).reshape(-1, 2) for p in positions]
    everything = np.concatenate(positions) if positions else np.empty((0, 2))
    if len(positions) < 2 or everything.size == 0:
        return [np.empty((0, 2)) for _ in positions]
    ref = _mean_position(everything[:, 0], everything[:, 1])
    planes = [np.column_stack(_tangent_offsets_arcsec(p[:, 0], p[:, 1], *ref)) for p in positions]
    residuals = []
    for i, plane in enumerate(planes):
        others = [q for j, q in enumerate(planes) if j != i and len(q)]
        if not len(plane) or not others:
            residuals.append(np.empty((0, 2)))
            continue
        pool = np.concatenate(others)
        dist, idx = cKDTree(pool).query(plane, distance_upper_bound=max_separation)
        ok = np.isfinite(dist)
        residuals.append(plane[ok] - pool[idx[ok]])
    return residuals


# --------------------------------------------------------------------------
# Figures


def message_figure(message, *, title="Figure not available"):
    """A small figure that only shows a message (used when a figure cannot be made)."""
    fig = _new_figure((6, 2.5))
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, str(message), ha="center", va="center", wrap=True, fontsize=10,
            transform=ax.transAxes)
    return fig


def mosaic_figure(data, wcs, *, title="Mosaic", footprints=None, names=None):
    """The resampled mosaic with an asinh stretch and an RA/Dec grid.

    Parameters
    ----------
    data : ndarray, shape (ny, nx)
        Mosaic (``_i2d`` SCI), MJy/sr; NaN where no exposure contributes
        (drawn in dark blue).
    wcs : gwcs.WCS or astropy.wcs.WCS
        Pixel (x, y) -> (RA, Dec) degrees of ``data``.
    title : str
    footprints : list of ndarray, each shape (4, 2), optional
        Exposure corners (RA, Dec) in degrees, outlined on the mosaic.
    names : list of str, optional
        Labels of ``footprints``.

    Returns
    -------
    matplotlib.figure.Figure
    """
    data = _check_image(data, "data")
    ny, nx = data.shape
    fig = _new_figure((7.5, 7.5 * min(1.4, max(0.6, ny / nx)) + 0.4))
    ax = fig.add_subplot()
    _show_image(ax, data)
    _radec_axes(ax, wcs, data.shape)
    if footprints:
        transform = getattr(wcs, "backward_transform", None) or wcs.world_to_pixel_values
        labels = short_names(names) if names else [None] * len(footprints)
        colors = colormaps["tab10"].colors
        for k, (corners, label) in enumerate(zip(footprints, labels)):
            corners = np.asarray(corners, float)
            px, py = transform(corners[:, 0], corners[:, 1])
            ax.add_patch(Polygon(np.column_stack([px, py]), closed=True, fill=False, lw=1.0,
                                 ls="--", edgecolor=colors[k % len(colors)], label=label))
        if names:
            _legend(ax, loc="upper right", fontsize=7, framealpha=0.6)
    finite = np.isfinite(data)
    ax.set_title(f"{title}\n{nx}×{ny} pixels, {100 * finite.mean():.1f}% covered; asinh stretch", fontsize=10)
    return fig


def footprints_figure(footprints, names, *, mosaic_footprint=None, title="Exposure footprints"):
    """Outlines of the exposures on the sky, in arcsec from their common centre.

    Parameters
    ----------
    footprints : list of ndarray, each shape (4, 2)
        Corners (RA, Dec) in degrees of each exposure (`wcs_tools.footprint`).
    names : list of str
        Exposure names, same length as ``footprints``.
    mosaic_footprint : ndarray, shape (4, 2), optional
        Corners of the output mosaic, drawn dashed.
    title : str

    Returns
    -------
    matplotlib.figure.Figure
        East is to the left and north up.
    """
    if len(footprints) != len(names):
        raise ValueError(f"footprints and names differ in length ({len(footprints)} != {len(names)})")
    if not len(footprints):
        raise ValueError("footprints is empty: nothing to draw")
    corners = [np.asarray(f, float).reshape(-1, 2) for f in footprints]
    allc = np.concatenate(corners + ([np.asarray(mosaic_footprint, float)] if mosaic_footprint is not None else []))
    ref = _mean_position(allc[:, 0], allc[:, 1])
    fig = _new_figure((6.5, 6.0))
    ax = fig.add_subplot()
    colors = colormaps["tab10"].colors
    for k, (c, name) in enumerate(zip(corners, short_names(names))):
        xi, eta = _tangent_offsets_arcsec(c[:, 0], c[:, 1], *ref)
        color = colors[k % len(colors)]
        ax.add_patch(Polygon(np.column_stack([xi, eta]), closed=True, fill=True, alpha=0.12,
                             facecolor=color, edgecolor="none"))
        ax.add_patch(Polygon(np.column_stack([xi, eta]), closed=True, fill=False, lw=1.5,
                             edgecolor=color, label=name))
        ax.plot(xi[0], eta[0], "o", color=color, ms=4)  # pixel (0, 0) corner
        ax.text(xi.mean(), eta.mean(), name, color=color, ha="center", va="center", fontsize=8)
    if mosaic_footprint is not None:
        m = np.asarray(mosaic_footprint, float)
        xi, eta = _tangent_offsets_arcsec(m[:, 0], m[:, 1], *ref)
        ax.add_patch(Polygon(np.column_stack([xi, eta]), closed=True, fill=False, lw=1.2, ls="--",
                             edgecolor="k", label="mosaic"))
    _sky_offset_axes(ax, allc, ref)
    ra_s = Angle(ref[0], u.deg).to_string(unit=u.hourangle, sep=":", precision=2)
    dec_s = Angle(ref[1], u.deg).to_string(unit=u.deg, sep=":", precision=1, alwayssign=True)
    ax.set_title(f"{title} (centre {ra_s} {dec_s}; dot: pixel 0,0)", fontsize=10)
    _legend(ax, loc="best", fontsize=7, framealpha=0.7)
    return fig


def tweakreg_figure(names, shifts, rotations, nmatch, rms, *, status=None, reference=None,
                    residuals=None, title="tweakreg alignment"):
    """Fitted WCS corrections of each exposure, and how well the aligned exposures agree.

    Parameters
    ----------
    names : list of str
        Exposure names, length N.
    shifts : array_like, shape (N, 2)
        Fitted (xi, eta) shift of each exposure, arcsec (``TWKSHFTX``, ``TWKSHFTY``).
    rotations : array_like, shape (N,)
        Fitted rotation, degrees (``TWKROT``).
    nmatch : array_like of int, shape (N,)
        Matched sources (``TWKNMAT``).
    rms : array_like, shape (N,)
        Fit RMS, pixels (``TWKRMS``).
    status : list of str, optional
        ``S_TWKREG`` of each exposure (COMPLETE / SKIPPED).
    reference : array_like of bool, optional
        True for the reference exposure(s).
    residuals : list of ndarray, each shape (K_i, 2), optional
        Cross-match residuals (arcsec) from `cross_match_residuals`.
    title : str

    Returns
    -------
    matplotlib.figure.Figure
        Top left: shift vectors (milliarcsec) from the origin; top right:
        cross-match residuals (milliarcsec) of the aligned sources with a
        robust RMS (from the median absolute deviation, so that a few false
        pairs do not dominate); bottom: a table of the fit of each exposure.
    """
    n = len(names)
    shifts = np.asarray(shifts, float).reshape(-1, 2)
    rotations, rms = np.asarray(rotations, float), np.asarray(rms, float)
    nmatch = np.asarray(nmatch, int)
    if not (len(shifts) == len(rotations) == len(nmatch) == len(rms) == n):
        raise ValueError(f"names, shifts, rotations, nmatch and rms must all have length {n}")
    status = list(status) if status is not None else ["COMPLETE"] * n
    reference = np.asarray(reference, bool) if reference is not None else np.zeros(n, bool)
    labels = short_names(names)
    colors = colormaps["tab10"].colors
    fig = _new_figure((10, 5.0 + 0.22 * (n + 1)))
    grid = fig.add_gridspec(2, 2, height_ratios=[4.6, 0.22 * (n + 1)])
    ax = fig.add_subplot(grid[0, 0])
    mas = shifts * 1000.0
    lim = max(1.0, 1.15 * float(np.max(np.abs(mas)))) if n else 1.0
    for k in range(n):
        color = colors[k % len(colors)]
        if reference[k] or status[k] != "COMPLETE":
            ax.plot(mas[k, 0], mas[k, 1], "o", color=color, mfc="none" if status[k] != "COMPLETE" else color,
                    label=f"{labels[k]} ({'reference' if reference[k] else status[k].lower()})")
            continue
        ax.annotate("", xy=(mas[k, 0], mas[k, 1]), xytext=(0, 0),
                    arrowprops=dict(arrowstyle="-|>", color=color, lw=1.8))
        ax.plot([], [], color=color, lw=1.8, label=f"{labels[k]}: rot {rotations[k] * 3600:+.2f}″")
    ax.set_xlim(lim, -lim)  # east to the left
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.axhline(0, color="0.7", lw=0.5)
    ax.axvline(0, color="0.7", lw=0.5)
    ax.set_xlabel("shift Δξ east (mas)")
    ax.set_ylabel("shift Δη north (mas)")
    ax.set_title("Fitted WCS shift of each exposure", fontsize=10)
    _legend(ax, fontsize=7, loc="best", framealpha=0.7)

    ax = fig.add_subplot(grid[0, 1])
    if residuals is not None and any(len(r) for r in residuals):
        all_r = np.concatenate([np.asarray(r, float).reshape(-1, 2) for r in residuals]) * 1000.0
        total = _robust_rms_2d(all_r)
        rlim = max(5.0, 6.0 * total)
        for k, r in enumerate(residuals):
            r = np.asarray(r, float).reshape(-1, 2) * 1000.0
            if len(r):
                outside = int(np.sum(np.any(np.abs(r) > rlim, axis=1)))
                ax.plot(r[:, 0], r[:, 1], ".", ms=4, alpha=0.7, color=colors[k % len(colors)],
                        label=f"{labels[k]}: {len(r)} pairs, RMS {_robust_rms_2d(r):.1f} mas"
                              + (f", {outside} off scale" if outside else ""))
        circle = np.linspace(0, 2 * np.pi, 60)
        ax.add_patch(Polygon(total * np.column_stack([np.cos(circle), np.sin(circle)]),
                             closed=True, fill=False, ls="--", edgecolor="k", lw=0.8))
        ax.set_xlim(rlim, -rlim)
        ax.set_ylim(-rlim, rlim)
        ax.set_aspect("equal")
        ax.axhline(0, color="0.7", lw=0.5)
        ax.axvline(0, color="0.7", lw=0.5)
        ax.set_xlabel("Δξ east (mas)")
        ax.set_ylabel("Δη north (mas)")
        ax.set_title(f"Aligned sources minus the other exposures'\n(robust RMS {total:.1f} mas, dashed circle)", fontsize=10)
        _legend(ax, fontsize=7, loc="lower left", framealpha=0.7)
    else:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no cross-match residuals\n(tweakreg skipped or no common sources)",
                ha="center", va="center", transform=ax.transAxes)

    ax = fig.add_subplot(grid[1, :])
    ax.set_axis_off()
    rows = [[labels[k], status[k] + (" (ref)" if reference[k] else ""), f"{nmatch[k]:d}", f"{rms[k]:.3f}",
             f"{shifts[k, 0] * 1000:+.1f}", f"{shifts[k, 1] * 1000:+.1f}", f"{rotations[k] * 3600:+.3f}"]
            for k in range(n)]
    table = ax.table(cellText=rows, colLabels=["exposure", "status", "nmatch", "RMS (pix)", "Δξ (mas)",
                                               "Δη (mas)", "rotation (″)"], loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1.0, 1.1)
    fig.suptitle(title, fontsize=11)
    return fig


def skymatch_figure(names, levels, *, method=None, status="COMPLETE", unit="MJy/sr", title="skymatch"):
    """Sky level of each exposure as a bar chart.

    Parameters
    ----------
    names : list of str
        Exposure names, length N.
    levels : array_like, shape (N,)
        Sky levels (``BKGLEVEL``), in ``unit``.
    method : str, optional
        ``skymethod`` used, shown in the title.
    status : str
        ``S_SKYMAT``; a SKIPPED run is said so in the title.
    unit : str
    title : str

    Returns
    -------
    matplotlib.figure.Figure
    """
    levels = np.asarray(levels, float)
    if levels.shape != (len(names),):
        raise ValueError(f"levels must have one value per name ({len(names)}), got shape {levels.shape}")
    labels = short_names(names)
    fig = _new_figure((max(5.0, 0.7 * len(names) + 2.5), 4.0))
    ax = fig.add_subplot()
    colors = colormaps["tab10"].colors
    bars = ax.bar(np.arange(len(names)), levels, color=[colors[k % len(colors)] for k in range(len(names))])
    ax.bar_label(bars, labels=[f"{v:.4g}" for v in levels], fontsize=8, padding=2)
    ax.set_xticks(np.arange(len(names)), labels, rotation=30 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylabel(f"sky level ({unit})")
    ax.set_xlabel("exposure")
    ax.margins(y=0.15)
    detail = f"skymethod={method}" if method else ""
    if status != "COMPLETE":
        detail = f"step {status}"
    span = np.ptp(levels) if len(levels) else 0.0
    ax.set_title(f"{title}\n{detail}; spread {span:.4g} {unit}", fontsize=10)
    return fig


def outlier_figure(data, dq, *, name="", outlier_bit=PIXEL["OUTLIER"], do_not_use_bit=PIXEL["DO_NOT_USE"]):
    """One exposure with the pixels flagged as outliers marked in red.

    Parameters
    ----------
    data : ndarray, shape (ny, nx)
        Exposure (``_crf`` SCI), MJy/sr.
    dq : ndarray of int, same shape as ``data``
        DQ array; ``outlier_bit`` marks outliers.
    name : str
        Exposure name for the title.
    outlier_bit, do_not_use_bit : int
        DQ bit values (JWST: OUTLIER = 16, DO_NOT_USE = 1).

    Returns
    -------
    matplotlib.figure.Figure
        Left: the exposure with outliers circled; right: the outlier mask
        binned for display (any flagged pixel marks its block).  The title
        gives the count and the fraction of usable pixels.
    """
    data = _check_image(data, "data")
    dq = _check_image(dq, "dq")
    if dq.shape != data.shape:
        raise ValueError(f"dq shape {dq.shape} differs from data shape {data.shape}")
    outliers = (dq & outlier_bit) > 0
    unusable = ((dq & do_not_use_bit) > 0) & ~outliers
    n_out = int(outliers.sum())
    n_usable = int((~unusable).sum())
    fig = _new_figure((11, 6.0))
    ax, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    _show_image(ax, np.where(unusable, np.nan, data))
    yy, xx = np.nonzero(outliers)
    if n_out > MAX_MARKERS:
        pick = np.random.default_rng(0).choice(n_out, MAX_MARKERS, replace=False)
        yy, xx = yy[pick], xx[pick]
    ax.scatter(xx, yy, s=18, facecolors="none", edgecolors="red", linewidths=0.6)
    ax.set_xlabel("x (pixel)")
    ax.set_ylabel("y (pixel)")
    ax.set_title("exposure (unusable pixels dark blue), outliers circled", fontsize=9)
    factor = max(1, _bin_factor(data.shape, 256))
    ny, nx = data.shape
    mask_view = np.where(_binned(outliers.astype(np.uint8), factor, reduce="max") > 0, 2,
                         np.where(_binned(unusable.astype(np.uint8), factor, reduce="max") > 0, 1, 0))
    ax2.imshow(mask_view, origin="lower", interpolation="nearest", vmin=0, vmax=2,
               cmap=ListedColormap(["white", "#9db4d9", "red"]), extent=(-0.5, nx - 0.5, -0.5, ny - 0.5))
    ax2.set_xlabel("x (pixel)")
    ax2.set_title(f"outlier mask (red; blue: DO_NOT_USE), {factor}×{factor} blocks", fontsize=9)
    fig.suptitle(f"{name}: {n_out} outlier pixels ({100.0 * n_out / max(n_usable, 1):.3f}% of usable)",
                 fontsize=11)
    return fig


def _label_cmap(n_labels, seed=0):
    rng = np.random.default_rng(seed)
    colors = rng.uniform(0.25, 1.0, size=(max(n_labels, 1) + 1, 3))
    colors[0] = 0.0
    return ListedColormap(colors)


def segmentation_figure(data, segm, *, wcs=None, title="Segmentation"):
    """The mosaic next to its segmentation map (each label a random colour).

    Parameters
    ----------
    data : ndarray, shape (ny, nx)
        Mosaic, MJy/sr.
    segm : ndarray of int, same shape
        Labels, 0 = background.
    wcs : gwcs.WCS, optional
        When given, the image panel gets an RA/Dec grid.
    title : str

    Returns
    -------
    matplotlib.figure.Figure
    """
    data = _check_image(data, "data")
    segm = _check_image(segm, "segm")
    if segm.shape != data.shape:
        raise ValueError(f"segm shape {segm.shape} differs from data shape {data.shape}")
    ny, nx = data.shape
    fig = _new_figure((12, 6.2 * min(1.4, max(0.6, ny / nx)) + 0.5))
    ax, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    _show_image(ax, data)
    if wcs is not None:
        _radec_axes(ax, wcs, data.shape)
    ax.set_title("mosaic (asinh)", fontsize=10)
    factor = _bin_factor(segm.shape, MAX_DISPLAY_PIXELS)
    shown = segm[::factor, ::factor].astype(np.int64)
    n_labels = int(segm.max()) if segm.size else 0
    ax2.imshow(shown, origin="lower", interpolation="nearest", cmap=_label_cmap(n_labels),
               vmin=0, vmax=max(n_labels, 1), extent=(-0.5, nx - 0.5, -0.5, ny - 0.5))
    ax2.set_xlabel("x (pixel)")
    ax2.set_ylabel("y (pixel)")
    n_sources = int(np.unique(segm[segm > 0]).size)
    ax2.set_title(f"segmentation map: {n_sources} sources, {100.0 * np.mean(segm > 0):.1f}% of pixels",
                  fontsize=10)
    fig.suptitle(title, fontsize=11)
    return fig


def magnitude_histogram_figure(magnitudes, *, is_extended=None, binwidth=0.25,
                               label="aper_total_abmag", title="Source catalog"):
    """Histogram of catalog AB magnitudes, point-like and extended stacked.

    Parameters
    ----------
    magnitudes : array_like, shape (N,)
        AB magnitudes; non-finite values (negative fluxes) are counted in
        the title but not drawn.
    is_extended : array_like of bool, shape (N,), optional
        Splits the histogram into point-like and extended sources.
    binwidth : float
        Histogram bin width, magnitudes.
    label : str
        Name of the magnitude column, for the axis label.
    title : str

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not binwidth > 0:
        raise ValueError(f"binwidth must be > 0 mag, got {binwidth}")
    mags = np.asarray(u.Quantity(magnitudes).value if hasattr(magnitudes, "unit") else magnitudes, float).ravel()
    ext = np.asarray(is_extended, bool).ravel() if is_extended is not None else np.zeros(mags.shape, bool)
    if ext.shape != mags.shape:
        raise ValueError(f"is_extended must have the length of magnitudes ({mags.size}), got {ext.size}")
    finite = np.isfinite(mags)
    fig = _new_figure((6.5, 4.2))
    ax = fig.add_subplot()
    if finite.any():
        lo = math.floor(mags[finite].min() / binwidth) * binwidth
        hi = math.ceil(mags[finite].max() / binwidth) * binwidth + binwidth
        bins = np.arange(lo, hi + binwidth / 2, binwidth)
        groups = [mags[finite & ~ext], mags[finite & ext]]
        names = [f"point-like ({groups[0].size})", f"extended ({groups[1].size})"]
        ax.hist(groups, bins=bins, stacked=True, label=names, color=["tab:blue", "tab:orange"],
                edgecolor="white", linewidth=0.4)
        ax.axvline(np.median(mags[finite]), color="k", ls="--", lw=0.8, label=f"median {np.median(mags[finite]):.2f}")
        _legend(ax, fontsize=8)
    else:
        ax.text(0.5, 0.5, "no source with a finite magnitude", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(f"{label} (AB mag)")
    ax.set_ylabel("sources per bin")
    ax.set_title(f"{title}: {mags.size} sources, {int((~finite).sum())} without a magnitude", fontsize=10)
    return fig


def aperture_correction_figure(aperture_params, psf_curve=None, *, data=None, title="Aperture correction"):
    """Encircled energy, aperture radii and corrections of a catalog, and the PSF stars.

    Parameters
    ----------
    aperture_params : dict
        ``meta['aperture_params']`` of a catalog (`calimage3.source_catalog`):
        ``aperture_ee``, ``aperture_radii``, ``aperture_corrections``,
        ``bkg_aperture_inner_radius``/``outer_radius``, ``method``,
        ``psf_fwhm``, ``n_psf_stars``, ``note``.
    psf_curve : dict or None
        ``meta['psf_curve']`` (``radius``, ``ee``, ``x``, ``y``,
        ``norm_radius``, ``outer_radius``, ``total_over_norm`` and its
        ``_err``, ``reason``) when the curve was measured on the mosaic.
    data : ndarray, shape (ny, nx), optional
        The mosaic: a second panel marks the PSF stars on it.
    title : str

    Returns
    -------
    matplotlib.figure.Figure
        Left: the curve (fraction of the total energy against radius, pixels)
        with each aperture's radius, energy and correction, the local
        background annulus and the range beyond which the energy is
        extrapolated; for APCORR values, the points ``(radius, 1 / apcorr)``.
    """
    ee = np.asarray(aperture_params.get("aperture_ee", []), float)
    radii = np.asarray(aperture_params.get("aperture_radii", []), float)
    corr = np.asarray(aperture_params.get("aperture_corrections", []), float)
    if not (ee.size == radii.size == corr.size):
        raise ValueError("aperture_ee, aperture_radii and aperture_corrections must have one value per aperture")
    method = aperture_params.get("method", "?")
    curve = psf_curve or {}
    fig = _new_figure((11.0, 4.6) if data is not None else (7.0, 4.6))
    ax = fig.add_subplot(1, 2 if data is not None else 1, 1)
    r_curve = np.asarray(curve.get("radius", []), float)
    e_curve = np.asarray(curve.get("ee", []), float)
    r_max = max([*radii[np.isfinite(radii)] * 3.0, 5.0])
    if r_curve.size:
        ax.plot(r_curve, e_curve, color="k", lw=1.2, label=f"curve of growth ({len(curve.get('x', []))} stars)")
        r_max = float(r_curve.max())
        if np.isfinite(curve.get("norm_radius", np.nan)):
            ax.axvspan(curve["norm_radius"], r_max, color="0.85", alpha=0.5, lw=0,
                       label="1/r wing fit; energy beyond extrapolated")
    with np.errstate(divide="ignore", invalid="ignore"):
        implied = 1.0 / corr
    if method == "apcorr_table":
        ax.plot(radii, implied, "s", color="tab:green", label="APCORR: radius, 1/apcorr")
    r_in = aperture_params.get("bkg_aperture_inner_radius", np.nan)
    r_out = aperture_params.get("bkg_aperture_outer_radius", np.nan)
    if np.isfinite(r_in) and np.isfinite(r_out):
        ax.axvspan(r_in, r_out, color="tab:orange", alpha=0.15, lw=0, label="local background annulus")
        r_max = max(r_max, float(r_out) * 1.05)
    colors = ["tab:blue", "tab:purple", "tab:red"]
    for k, (e, r, c) in enumerate(zip(ee, radii, corr)):
        color = colors[k % len(colors)]
        ax.axvline(r, color=color, ls="--", lw=0.9,
                   label=f"aper{e:g}: r = {r:.3f} pix, apcorr = {c:.4f}")
        ax.axhline(e / 100.0, color=color, ls=":", lw=0.6)
    ax.set_xscale("log")
    lo = min([*radii[np.isfinite(radii) & (radii > 0)], *(r_curve[:1] if r_curve.size else [0.1])])
    ax.set_xlim(max(lo * 0.5, 0.02), r_max)
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("radius (mosaic pixels)")
    ax.set_ylabel("fraction of the total energy")
    fwhm = aperture_params.get("psf_fwhm", np.nan)
    lines = [f"method: {method}" + (f", FWHM {fwhm:.2f} pix" if np.isfinite(fwhm) else "")]
    if np.isfinite(curve.get("total_over_norm", np.nan)):
        lines.append(f"total / EE({curve['norm_radius']:.1f} pix) = {curve['total_over_norm']:.4f}"
                     f" +- {curve.get('total_over_norm_err', np.nan):.4f}")
    note = aperture_params.get("note") or curve.get("reason") or ""
    if note:
        lines.append(note if len(note) < 90 else note[:87] + "...")
    if method == "refused":
        lines.append("aper_total_* are NaN")
    ax.set_title("\n".join(lines), fontsize=8, loc="left")
    _legend(ax, fontsize=7, loc="lower right")
    if data is not None:
        image = _check_image(data, "data")
        ax2 = fig.add_subplot(1, 2, 2)
        _show_image(ax2, image)
        x = np.asarray(curve.get("x", []), float)
        y = np.asarray(curve.get("y", []), float)
        ax2.plot(x, y, "o", mfc="none", mec="tab:red", ms=9, mew=1.0, label=f"PSF stars ({x.size})")
        ax2.set_xlabel("x (pix)")
        ax2.set_ylabel("y (pix)")
        ax2.set_title("stars of the curve of growth" if x.size else f"no PSF stars (method {method})", fontsize=9)
        if x.size:
            _legend(ax2, fontsize=8, loc="upper right")
    fig.suptitle(title, fontsize=11)
    return fig


def _as_jy(flux):
    return np.asarray(u.Quantity(flux, u.Jy).value if hasattr(flux, "unit") else flux, float)


def truth_flux_figure(true_flux, measured_flux, *, types=None, true_flux_all=None, detected=None,
                      title="Photometry against truth"):
    """Measured against true fluxes of matched sources, and detection completeness.

    Parameters
    ----------
    true_flux, measured_flux : array_like, shape (K,)
        Fluxes of the matched pairs, Jy (Quantity or plain).
    types : array_like of str, shape (K,), optional
        ``star``/``galaxy`` of each pair, for colours.
    true_flux_all : array_like, shape (M,), optional
        True fluxes (Jy) of every truth source inside the mosaic.
    detected : array_like of bool, shape (M,), optional
        Whether each of ``true_flux_all`` was matched; with it a third
        panel shows completeness against true AB magnitude.
    title : str

    Returns
    -------
    matplotlib.figure.Figure
        Panels: measured vs true flux (log-log, 1:1 line); ratio
        measured/true against true AB magnitude with the median ratio of
        each type; completeness (when given).
    """
    tf, mf = _as_jy(true_flux).ravel(), _as_jy(measured_flux).ravel()
    if tf.shape != mf.shape:
        raise ValueError(f"true_flux and measured_flux differ in length ({tf.size} != {mf.size})")
    types = np.asarray(types).astype(str) if types is not None else np.full(tf.shape, "source")
    with_completeness = true_flux_all is not None and detected is not None
    fig = _new_figure((15 if with_completeness else 10.5, 4.6))
    axes = [fig.add_subplot(1, 3 if with_completeness else 2, k + 1) for k in range(3 if with_completeness else 2)]
    ok = (tf > 0) & np.isfinite(mf)
    tmag = -2.5 * np.log10(np.where(tf > 0, tf, np.nan)) + 8.9
    for kind in np.unique(types):
        sel = ok & (types == kind) & (mf > 0)
        color = _TYPE_COLORS.get(kind, "tab:green")
        axes[0].loglog(tf[sel], mf[sel], ".", color=color, label=f"{kind} ({int(sel.sum())})")
        ratio = mf[ok & (types == kind)] / tf[ok & (types == kind)]
        axes[1].plot(tmag[ok & (types == kind)], ratio, ".", color=color,
                     label=f"{kind}: median {np.median(ratio):.3f}" if ratio.size else kind)
    if ok.any():
        lo, hi = np.nanmin(tf[ok]) / 2, np.nanmax(tf[ok]) * 2
        axes[0].plot([lo, hi], [lo, hi], "k--", lw=0.8, label="1:1")
    axes[0].set_xlabel("true flux (Jy)")
    axes[0].set_ylabel("measured flux (Jy)")
    axes[0].set_title(f"{int(ok.sum())} matched sources", fontsize=10)
    _legend(axes[0], fontsize=8)
    axes[1].axhline(1.0, color="k", ls="--", lw=0.8)
    axes[1].set_xlabel("true AB magnitude")
    axes[1].set_ylabel("measured / true flux")
    if ok.any():
        r = mf[ok] / tf[ok]
        axes[1].set_ylim(max(0.0, np.nanpercentile(r, 1) - 0.2), np.nanpercentile(r, 99) + 0.2)
    axes[1].set_title("flux ratio", fontsize=10)
    _legend(axes[1], fontsize=8)
    if with_completeness:
        tall = _as_jy(true_flux_all).ravel()
        det = np.asarray(detected, bool).ravel()
        if det.shape != tall.shape:
            raise ValueError(f"detected must have the length of true_flux_all ({tall.size}), got {det.size}")
        mag_all = -2.5 * np.log10(np.where(tall > 0, tall, np.nan)) + 8.9
        good = np.isfinite(mag_all)
        if good.any():
            bins = np.arange(math.floor(mag_all[good].min() * 2) / 2, math.ceil(mag_all[good].max() * 2) / 2 + 0.51, 0.5)
            n_all, _ = np.histogram(mag_all[good], bins)
            n_det, _ = np.histogram(mag_all[good & det], bins)
            with np.errstate(invalid="ignore", divide="ignore"):
                frac = n_det / n_all
            centres = 0.5 * (bins[1:] + bins[:-1])
            axes[2].step(centres, frac, where="mid", color="k")
            axes[2].plot(centres, frac, "o", color="k", ms=3)
        axes[2].set_ylim(-0.03, 1.05)
        axes[2].set_xlabel("true AB magnitude")
        axes[2].set_ylabel("fraction detected")
        axes[2].set_title(f"completeness: {int(det.sum())} of {det.size} truth sources in the mosaic", fontsize=10)
        axes[2].grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    return fig


def truth_position_figure(dxi, deta, *, true_flux=None, types=None, title="Astrometry against truth"):
    """Offsets of measured positions from the true ones.

    Parameters
    ----------
    dxi, deta : array_like, shape (K,)
        Measured minus true position, arcsec east and north (`match_catalogs`).
    true_flux : array_like, shape (K,), optional
        True fluxes (Jy); with them a second panel shows the offset against
        true AB magnitude.
    types : array_like of str, shape (K,), optional
        ``star``/``galaxy``, for colours and per-type RMS.
    title : str

    Returns
    -------
    matplotlib.figure.Figure
        Left: the offsets (milliarcsec, east left) with the median and a
        robust RMS (from the median absolute deviation) of each type; right
        (with ``true_flux``): offset size against true AB magnitude.
    """
    dxi, deta = np.asarray(dxi, float).ravel() * 1000.0, np.asarray(deta, float).ravel() * 1000.0
    if dxi.shape != deta.shape:
        raise ValueError(f"dxi and deta differ in length ({dxi.size} != {deta.size})")
    types = np.asarray(types).astype(str) if types is not None else np.full(dxi.shape, "source")
    fig = _new_figure((10.5 if true_flux is not None else 5.8, 4.8))
    ax = fig.add_subplot(1, 2 if true_flux is not None else 1, 1)
    offsets = np.column_stack([dxi, deta])
    lim = 10.0
    if dxi.size:
        lim = max(5.0, float(np.max(np.abs(np.median(offsets, axis=0)))) + 6.0 * _robust_rms_2d(offsets))
    for kind in np.unique(types):
        sel = types == kind
        med = (float(np.median(dxi[sel])), float(np.median(deta[sel])))
        ax.plot(dxi[sel], deta[sel], ".", color=_TYPE_COLORS.get(kind, "tab:green"), alpha=0.8,
                label=f"{kind} ({int(sel.sum())}): robust RMS {_robust_rms_2d(offsets[sel]):.1f} mas, "
                      f"median ({med[0]:+.1f}, {med[1]:+.1f})")
    ax.axhline(0, color="0.6", lw=0.5)
    ax.axvline(0, color="0.6", lw=0.5)
    ax.set_xlim(lim, -lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel("Δξ east, measured − true (mas)")
    ax.set_ylabel("Δη north (mas)")
    _legend(ax, fontsize=7, loc="lower left")
    if true_flux is not None:
        tf = _as_jy(true_flux).ravel()
        if tf.shape != dxi.shape:
            raise ValueError(f"true_flux must have the length of dxi ({dxi.size}), got {tf.size}")
        ax2 = fig.add_subplot(1, 2, 2)
        tmag = -2.5 * np.log10(np.where(tf > 0, tf, np.nan)) + 8.9
        for kind in np.unique(types):
            sel = types == kind
            ax2.semilogy(tmag[sel], np.maximum(np.hypot(dxi[sel], deta[sel]), 0.01), ".",
                         color=_TYPE_COLORS.get(kind, "tab:green"), label=kind)
        ax2.set_xlabel("true AB magnitude")
        ax2.set_ylabel("|offset| (mas)")
        ax2.grid(alpha=0.3, which="both")
        _legend(ax2, fontsize=8)
    fig.suptitle(title, fontsize=11)
    return fig


def tile_layout_figure(footprints, names, tiles, *, counts=None, title="Sky tiles"):
    """Sky tiles (grid outline and core) over the exposure footprints, in arcsec from their common centre.

    Parameters
    ----------
    footprints : list of ndarray, each shape (n, 2)
        Exposure corners (RA, Dec), degrees.
    names : list of str
        Exposure names, same length as ``footprints``.
    tiles : dict
        Tile id -> ``(grid, core)``: corners (RA, Dec) of the tile's grid
        (margin included) and of its core, degrees, each shape (4, 2).
    counts : dict or None
        Tile id -> number of sources its catalog keeps, written under the id.
    title : str

    Returns
    -------
    matplotlib.figure.Figure
        East to the left, north up; cores shaded grey, grids dashed.
    """
    if len(footprints) != len(names):
        raise ValueError(f"footprints and names differ in length ({len(footprints)} != {len(names)})")
    if not len(footprints):
        raise ValueError("footprints is empty: nothing to draw")
    corners = [np.asarray(f, float).reshape(-1, 2) for f in footprints]
    tile_corners = [np.asarray(c, float) for grid_core in tiles.values() for c in grid_core]
    allc = np.concatenate(corners + tile_corners)
    ref = _mean_position(allc[:, 0], allc[:, 1])
    fig = _new_figure((6.5, 6.0))
    ax = fig.add_subplot()
    for tid, (grid, core) in sorted(tiles.items()):
        for c, kwargs in ((np.asarray(core, float), dict(fill=True, facecolor="0.85", edgecolor="0.4", lw=0.8)),
                          (np.asarray(grid, float), dict(fill=False, edgecolor="0.3", lw=0.8, ls="--"))):
            xi, eta = _tangent_offsets_arcsec(c[:, 0], c[:, 1], *ref)
            ax.add_patch(Polygon(np.column_stack([xi, eta]), closed=True, **kwargs))
        xi, eta = _tangent_offsets_arcsec(np.asarray(core)[:, 0], np.asarray(core)[:, 1], *ref)
        label = tid if counts is None or tid not in counts else f"{tid}\n{counts[tid]} sources"
        ax.text(xi.mean(), eta.mean(), label, ha="center", va="center", fontsize=7, color="0.2")
    colors = colormaps["tab10"].colors
    for k, (c, name) in enumerate(zip(corners, short_names(names))):
        xi, eta = _tangent_offsets_arcsec(c[:, 0], c[:, 1], *ref)
        ax.add_patch(Polygon(np.column_stack([xi, eta]), closed=True, fill=False, lw=1.3,
                             edgecolor=colors[k % len(colors)], label=name))
    _sky_offset_axes(ax, allc, ref)
    ax.set_title(f"{title}: {len(tiles)} tiles, {len(corners)} exposures (core shaded, margin dashed)", fontsize=10)
    _legend(ax, loc="best", fontsize=7, framealpha=0.7)
    return fig
