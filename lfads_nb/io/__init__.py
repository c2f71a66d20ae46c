"""Files: saving and loading datasets in lfads_nb's netCDF, the LFADS HDF5 layout and NWB.

``save(ds, path)`` / ``load(path)`` round-trip a Dataset (or a DataTree of sessions) through
netCDF-4 (``netcdf``); ``load`` also reads the HDF5 layout of the original LFADS and lfads-torch
(``lfads_h5``, which ``export_lfads_h5`` writes) and NWB files of spike times (``nwb``), finding the
format from the file's content through the reader registry (``registry``: ``READERS``, one
``Reader`` per format). ``common`` holds what the formats share: atomic writes, HDF5 sniffing and
the ``kind`` / ``bin_width`` options checked against what a file stores.
"""
from .lfads_h5 import export_lfads_h5
from .netcdf import save, save_scores
from .registry import READERS, Reader, load

__all__ = ["READERS", "Reader", "export_lfads_h5", "load", "save", "save_scores"]
