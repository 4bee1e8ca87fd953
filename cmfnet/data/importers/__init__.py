"""``cmfnet import <format>``: bring real data into the suite's dataset format.

Formats: ``paired`` (one case of co-acquired modalities at a time, e.g. NPC CT + MR), ``word``
(the WORD release), ``brats`` (BraTS 2019/2020 naming and the BraTS-2015 DeepMedic layout),
``acdc`` (WSL4MIS HDF5 volumes with scribbles) and ``nnunet`` (an nnU-Net raw dataset), one module
each; what they share is :mod:`cmfnet.data.importers.common`, their splits :mod:`cmfnet.data.splits`.

:data:`IMPORTERS` is the registry: the ``cmfnet import`` sub-parsers are built from it, and the
Snakemake config schema's ``source.importer`` list must equal it (a test checks that). A new
format is one module defining an :class:`Importer`, registered here (docs/adding-an-importer.md).
"""

from __future__ import annotations

import argparse

from cmfnet.data.importers import acdc, brats, nnunet, paired, word
from cmfnet.data.importers.common import Importer, common_options

# name -> format, in the order `cmfnet import --help` lists them
IMPORTERS: dict[str, Importer] = {}


def register(importer: Importer) -> Importer:
    """Make ``importer`` a ``cmfnet import`` format; a name already taken is a programming error."""
    if importer.name in IMPORTERS:
        raise ValueError(f"importer '{importer.name}' is already registered")
    IMPORTERS[importer.name] = importer
    return importer


for _module in (paired, word, brats, acdc, nnunet):
    register(_module.IMPORTER)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """``cmfnet import``, with one sub-parser per registered format."""
    parser = subparsers.add_parser("import", help="import real data into the dataset format",
                                   description=__doc__.split("\n\n")[0] if __doc__ else None)
    formats = parser.add_subparsers(dest="importer", required=True, metavar="FORMAT")
    parents = {adds_cases: common_options(adds_cases) for adds_cases in (False, True)}
    for importer in IMPORTERS.values():
        sub = formats.add_parser(importer.name, parents=[parents[importer.adds_cases]], help=importer.help)
        importer.add_arguments(sub)
        sub.set_defaults(func=importer.run)
