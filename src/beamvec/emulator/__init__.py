"""A local stand-in for the Gemini API and Vertex AI embedding endpoints.

``Emulator`` runs it in this process (tests); ``main`` serves it from the
command line (``beamvec emulator``); ``expected_vector`` says which vector it
returns for a text, so tests can check every row.
"""

from beamvec.emulator.cli import main
from beamvec.emulator.config import EmulatorConfig
from beamvec.emulator.server import Emulator
from beamvec.emulator.vectors import expected_vector

__all__ = ["Emulator", "EmulatorConfig", "expected_vector", "main"]
