"""Pure numpy/astropy work, picklable for worker processes: a run's facts and pieces,
exclusion regions, assembly of pieces, smoothing, the condition model and normalisation.
"""
