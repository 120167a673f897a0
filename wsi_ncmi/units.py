"""Unit types for the numbers that are easiest to mix up (as STAMP does): a resolution in
µm per pixel and a length in pixels. They are plain ``float``/``int`` at run time; the names
say in signatures which one a function takes."""

from typing import NewType

#: resolution, micrometres per pixel (µm/px); larger = coarser
Mpp = NewType("Mpp", float)
#: a length in pixels at some stated resolution (level-0 px unless the name says otherwise)
Px = NewType("Px", int)
