"""Reading and writing simulator output: HDF5 event files, calorimeter layouts, streaming datasets.

* :mod:`surrogate.data.hdf5`: :func:`atomic_output` (used by every writer in the project), checked
  opening of HDF5 files, event-file layouts (:class:`Field`) and their checks.
* :mod:`surrogate.data.event_writer`: the chunked/compressed atomic :class:`EventWriter` and the
  stitching of per-rank shards into one virtual file.
* :mod:`surrogate.data.calo`: the CaloGAN (arXiv:1705.02355) and CaloChallenge (arXiv:2410.21611)
  layouts, their readers, writers and validators (the detector geometry itself is
  :mod:`surrogate.geometry`); :mod:`surrogate.data.shower_dataset`: streaming them for training.
* :mod:`surrogate.data.binning`: the CaloChallenge's XML voxel binning files, read into
  :class:`~surrogate.geometry.CaloGeometry` objects (:func:`read_binning_xml`).
* :mod:`surrogate.data.galaxy`: galaxy stamps (observed, PSF, noise variance, PSF-free profile,
  magnitude, half-light radius) and :class:`GalaxyStampDataset`.
* :mod:`surrogate.data.real_galaxies`: real observed stamps at their own pixel scale with their
  PSF and (correlated) GalSim noise, from a GalSim ``RealGalaxyCatalog`` or plain FITS files.
* :mod:`surrogate.data.root`: ROOT TTrees read with uproot (an optional extra, imported only when a
  ROOT file is read): opening, branch checks, chunked reads and :func:`read_root_flat` (flat
  branches to arrays); :mod:`surrogate.data.root_hits`: :func:`read_root_hits` (per-event hit lists
  to dense ``(N, n_layers, n_strips)`` cell arrays), :class:`RootHitDataset` and
  :func:`root_hits_to_hdf5`, with branches and cell-id decoding in a :class:`RootHitMapping`
  (:mod:`surrogate.data.root_mapping`).
* :mod:`surrogate.data.sharding`: the seeded per-epoch plan of blocks per rank and worker.
* :mod:`surrogate.data.pairs`: simulation pairs ``theta`` / ``x`` in HDF5 for posterior
  estimation; :mod:`surrogate.data.sbibm_csv`: sbibm's CSV tables (observations, samples).
"""

from surrogate.data.binning import binning_particles, read_binning_xml
from surrogate.data.calo import (
    CALOCHALLENGE_FIELDS,
    CALOGAN_FIELDS,
    CALOGAN_KEYS,
    CALOGAN_UNITS,
    CaloChallengeWriter,
    CaloGANWriter,
    read_calochallenge,
    read_calogan,
    read_incident_energies,
    validate_calochallenge,
    validate_calogan,
    write_calochallenge,
    write_calogan,
)
from surrogate.data.event_writer import EventWriter
from surrogate.data.galaxy import (
    GALAXY_KEYS,
    GALAXY_UNITS,
    GalaxyStampDataset,
    GalaxyWriter,
    galaxy_file_info,
    read_galaxies,
    validate_galaxies,
    write_galaxies,
)
from surrogate.data.hdf5 import Field, atomic_output, open_hdf5
from surrogate.data.root import read_root_flat
from surrogate.data.root_hits import RootHitDataset, read_root_hits, root_hits_to_hdf5
from surrogate.data.root_mapping import RootHitMapping
from surrogate.data.sharding import Segment, epoch_segments, shard_length
from surrogate.data.shower_dataset import CaloShowerDataset

__all__ = [
    "CALOCHALLENGE_FIELDS",
    "CALOGAN_FIELDS",
    "CALOGAN_KEYS",
    "CALOGAN_UNITS",
    "CaloChallengeWriter",
    "CaloGANWriter",
    "CaloShowerDataset",
    "EventWriter",
    "GALAXY_KEYS",
    "GALAXY_UNITS",
    "GalaxyStampDataset",
    "GalaxyWriter",
    "Field",
    "RootHitDataset",
    "RootHitMapping",
    "Segment",
    "atomic_output",
    "binning_particles",
    "epoch_segments",
    "galaxy_file_info",
    "open_hdf5",
    "read_binning_xml",
    "read_calochallenge",
    "read_calogan",
    "read_galaxies",
    "read_incident_energies",
    "read_root_flat",
    "read_root_hits",
    "root_hits_to_hdf5",
    "shard_length",
    "validate_calochallenge",
    "validate_calogan",
    "validate_galaxies",
    "write_calochallenge",
    "write_calogan",
    "write_galaxies",
]
