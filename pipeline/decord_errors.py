"""The exceptions decord raises for a file or stream it cannot handle, in one place.

decord turns FFmpeg failures into ``DECORDError``; it raises a bare ``RuntimeError`` when it cannot
open a file at all, and an ``AssertionError`` when the container reports no frames.
"""

import decord

DECORD_ERRORS = (decord.DECORDError, RuntimeError, AssertionError)
