"""Files the demo and the tests use: a short spoken clip (see README.md in this directory)."""

from pathlib import Path

#: "The quick brown fox jumps over the lazy dog.", spoken by eSpeak NG (16 kHz mono WAV).
QUICK_BROWN_FOX_WAV = Path(__file__).with_name("quick_brown_fox.wav")
QUICK_BROWN_FOX_TEXT = "The quick brown fox jumps over the lazy dog."
