"""Identify: which words of each forget answer are unwanted (UW); everything else is general (GW).

Identifiers and their registry live here; the file formats of labelled data are data's
(`data/identified.py`), re-exported for convenience."""

from tokenforget.data.identified import read_identified, write_identified, write_published

__all__ = ["read_identified", "write_identified", "write_published"]
