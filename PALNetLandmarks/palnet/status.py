"""Every status palnet reports, in one place (plain strings: they go into files as they are).

A scan's status, from ``pipeline.predict``:

- ``OK``: the face template fits the scan and every landmark was placed;
- ``PARTIAL``: the face fits, but the scan lacks some landmarks' surroundings (a cut, a hole):
  those are missing, without a position (see ``pipeline.missing_landmarks``);
- ``LOW_FIT``: the face fits the template poorly: check the landmarks;
- ``NOT_A_FACE``: the surface does not look like a face (a batch writes no landmarks for it
  unless asked).

A batch item's status is a scan's, or one of ``ERROR`` (the file could not be read or
predicted), ``SKIPPED`` (its output is there already and is not to be replaced) and
``NOT_RUN`` (the batch was cancelled first). Imports nothing.
"""

OK = "ok"
PARTIAL = "partial"
LOW_FIT = "low fit"
NOT_A_FACE = "not a face"
SCAN_STATUSES = (OK, PARTIAL, LOW_FIT, NOT_A_FACE)
DONE = (OK, PARTIAL, LOW_FIT)  # a landmark file is written
ERROR, SKIPPED, NOT_RUN = "error", "skipped", "not run"
