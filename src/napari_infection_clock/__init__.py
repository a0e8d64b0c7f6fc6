"""Infection state and infection clock from live-cell time-lapse stacks.

The import is kept light: the Qt-free engine lives in :mod:`napari_infection_clock.core`,
the napari views in :mod:`napari_infection_clock.ui`, the command line in
:mod:`napari_infection_clock.cli`.
"""

__version__ = "0.1.0"
