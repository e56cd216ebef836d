"""beamvec: batch embedding of text corpora on Apache Beam."""

__version__ = "0.1.0"
