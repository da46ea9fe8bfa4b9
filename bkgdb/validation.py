"""Checking a background model the way an analysis uses it: gammapy's FoV background fit."""

__all__ = ["fov_background_norm"]


def fov_background_norm(observation, excluded, energy_range_tev=(0.1, 10.0), n_energy=8, offset_max_deg=2.0,
                        binsz_deg=0.05, aeff_safe_mask=False):
    """Norm of a `FoVBackgroundMaker` scale fit of one observation with its own background model.

    A norm of 1 means the model predicts the counts outside the excluded regions.

    Parameters
    ----------
    observation : `gammapy.data.Observation`
        The run, with its background model.
    excluded : list of (ra, dec, radius)
        Circles (deg) left out of the fit, e.g. the known sources.
    energy_range_tev : tuple, optional
        Reconstructed-energy range of the fit. Default is (0.1, 10).
    n_energy : int, optional
        Energy bins. Default is 8.
    offset_max_deg : float, optional
        Pixels further from the pointing are not used. Default is 2.
    binsz_deg : float, optional
        Pixel size. Default is 0.05.
    aeff_safe_mask : bool, optional
        Also apply gammapy's default effective-area energy threshold (needs the run's IRFs).
        Default is False.

    Returns
    -------
    norm : `gammapy.modeling.Parameter`
        Its ``value`` and ``error``.
    """
    from astropy import units as u
    from astropy.coordinates import SkyCoord
    from gammapy.datasets import MapDataset
    from gammapy.makers import FoVBackgroundMaker, MapDatasetMaker, SafeMaskMaker
    from gammapy.maps import MapAxis, WcsGeom
    from regions import CircleSkyRegion

    energy = MapAxis.from_energy_bounds(*energy_range_tev, nbin=n_energy, unit="TeV")
    geom = WcsGeom.create(skydir=observation.pointing.fixed_icrs, binsz=binsz_deg,
                          width=(2 * offset_max_deg, 2 * offset_max_deg), frame="icrs", axes=[energy])
    selection, methods, extra = ["counts", "background"], ["offset-max"], {}
    if aeff_safe_mask:
        selection.append("exposure")
        methods.append("aeff-default")
        extra["energy_axis_true"] = MapAxis.from_energy_bounds(
            energy_range_tev[0] / 2, energy_range_tev[1] * 2, nbin=20, unit="TeV", name="energy_true")
    dataset = MapDataset.create(geom, name=str(observation.obs_id), **extra)
    dataset = MapDatasetMaker(selection=selection).run(dataset, observation)
    dataset = SafeMaskMaker(methods=methods, offset_max=offset_max_deg * u.deg).run(dataset, observation)
    regions = [CircleSkyRegion(SkyCoord(ra * u.deg, dec * u.deg), radius * u.deg) for ra, dec, radius in excluded]
    mask = geom.region_mask(regions, inside=False)
    dataset = FoVBackgroundMaker(method="scale", exclusion_mask=mask).run(dataset)
    return dataset.background_model.spectral_model.norm
