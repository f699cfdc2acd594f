"""The CaloChallenge 2022 voxel binning files (XML) as :class:`~surrogate.geometry.CaloGeometry` objects.

A binning file (``binning_dataset_1_photons.xml``, ``binning_dataset_1_pions.xml``,
``binning_dataset_2.xml`` of github.com/CaloChallenge/homepage, ``code/``; copies in
``datasets/calochallenge/``) holds one ``<Bin>`` element per particle with one ``<Layer>`` per
calorimeter layer, in order::

    <Bins>
       <Bin pid="22" etaMin="0" etaMax="130" name="photon">
          <Layer id="0" r_edges="0,5,10,30,50,100,200,400,600" n_bin_alpha="1" />
          ...
          <Layer id="4" r_edges="0" n_bin_alpha="1" />     (no radial bin: no voxels)

``r_edges`` are the radial bin edges in mm and ``n_bin_alpha`` the number of equal angular bins
over ``[-pi, pi)``. The challenge's ``XMLHandler`` reads the layers in document order and counts
voxels layer by layer; a layer with a single edge has no voxels. Each layer with voxels becomes a
:class:`~surrogate.geometry.PolarLayer` named ``layer_<id>``; the voxel order of the files
(layer, then angle, then radius) is the geometry's :meth:`~surrogate.geometry.CaloGeometry.flatten`
order. Depths are not in the files: the layers' ``depth_mm`` is ``None``.

Voxel counts: 368 (DS1 photons: layers 0, 1, 2, 3, 12), 533 (DS1 pions: 0-3, 12-14) and 6480
(DS2: 45 layers of 16 x 9).

Example:
    >>> import tempfile, pathlib
    >>> text = ('<Bins><Bin pid="11" name="electron"><Layer id="0" r_edges="0,4.65,9.3" n_bin_alpha="16"/>'
    ...         '<Layer id="1" r_edges="0" n_bin_alpha="1"/></Bin></Bins>')
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = pathlib.Path(d, "binning.xml")
    ...     _ = path.write_text(text)
    ...     geometry = read_binning_xml(path)
    >>> geometry.layer_names, geometry.n_voxels, geometry.layers[0].shape
    (('layer_0',), 32, (16, 2))
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from surrogate.geometry import CaloGeometry, PolarLayer

__all__ = ["binning_particles", "read_binning_xml"]


def _parse(path: Path) -> ElementTree.Element:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such binning file")
    try:
        return ElementTree.parse(path).getroot()
    except ElementTree.ParseError as exc:
        raise ValueError(f"{path}: not a valid XML binning file ({exc})") from None


def binning_particles(path: str | os.PathLike) -> list[str]:
    """The particle names (``<Bin name=...>``) of a binning file, in document order.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If it is not XML or a ``<Bin>`` has no ``name``.
    """
    path = Path(path)
    names = []
    for element in _parse(path):
        if "name" not in element.attrib:
            raise ValueError(f"{path}: a <{element.tag}> element has no name attribute")
        names.append(element.attrib["name"])
    return names


def read_binning_xml(path: str | os.PathLike, *, particle: str | None = None) -> CaloGeometry:
    """Reads a CaloChallenge binning file into a geometry of :class:`~surrogate.geometry.PolarLayer` s.

    Arguments:
        path: The XML file.
        particle: The ``<Bin name=...>`` to read (``"photon"``, ``"pion"``, ``"electron"``);
            ``None`` takes the file's only one.

    Returns:
        A :class:`~surrogate.geometry.CaloGeometry` named after the file (e.g.
        ``"binning_dataset_1_photons"``) with one ``layer_<id>`` per layer that has radial bins,
        in document order, depths unknown.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not XML, the particle is missing (or ``None`` with several in
            the file), a layer lacks ``id``, ``r_edges`` or ``n_bin_alpha``, the ids are not
            0, 1, 2, ... in order, a value is not a number, edges are not increasing, or no layer
            has voxels. The message names the file, the layer and the value.

    References:
        Krause et al., arXiv:2410.21611; github.com/CaloChallenge/homepage ``code/XMLHandler.py``.
    """
    path = Path(path)
    root = _parse(path)
    bins = [element for element in root if element.tag == "Bin"]
    names = [element.attrib.get("name") for element in bins]
    if particle is None:
        if len(bins) != 1:
            raise ValueError(f"{path}: holds particles {names}; pass particle= to choose one")
        chosen = bins[0]
    else:
        matches = [element for element in bins if element.attrib.get("name") == particle]
        if not matches:
            raise ValueError(f"{path}: no <Bin name={particle!r}>; the file has {names}")
        chosen = matches[0]
    layers = []
    for position, element in enumerate(chosen):
        where = f"{path} <Layer> number {position}"
        missing = [key for key in ("id", "r_edges", "n_bin_alpha") if key not in element.attrib]
        if element.tag != "Layer" or missing:
            raise ValueError(f"{where}: expected <Layer id=... r_edges=... n_bin_alpha=...>, got <{element.tag}> "
                             f"lacking {missing}")
        text = element.attrib
        try:
            layer_id, n_alpha = int(text["id"]), int(text["n_bin_alpha"])
            edges = tuple(float(value) for value in text["r_edges"].split(","))
        except ValueError:
            raise ValueError(f"{where}: id and n_bin_alpha must be integers and r_edges comma-separated numbers, "
                             f"got id={text['id']!r}, n_bin_alpha={text['n_bin_alpha']!r}, "
                             f"r_edges={text['r_edges']!r}") from None
        if layer_id != position:
            raise ValueError(f"{where}: has id {layer_id}; expected the ids 0, 1, 2, ... in document order")
        if len(edges) < 2:  # no radial bin: the layer holds no voxels
            continue
        try:
            layers.append(PolarLayer(f"layer_{layer_id}", edges, n_alpha))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    if not layers:
        raise ValueError(f"{path}: particle {chosen.attrib.get('name')!r} has no layer with radial bins")
    return CaloGeometry(path.stem, layers)
