"""Every choice a user makes by name, in one place: the command line, the Slicer module and
the readers and writers all take their lists from here (nothing heavy is imported, so the
command line can build its help before NumPy loads)."""

LANDMARK_FORMATS = ("mrk.json", "fcsv", "csv", "txt")  # landmark files palnet reads and writes
SNAP_METHODS = ("nearest", "mean-k", "surface")  # how predicted points are put onto the scan's surface
NO_SNAP = "none"
# The closest surface point: on the synthetic test faces (median edge 2.2 mm) it beats the nearest
# vertex, and on coarse scans (edges 5-12 mm) the nearest vertex moves a point by up to half an
# edge (docs/pipeline.md, step 8).
DEFAULT_SNAP = "surface"
UNITS_PER_MM = {"mm": 1.0, "cm": 0.1, "m": 0.001}  # the length units of mesh and landmark files
AUTO_UNITS = "auto"
UNIT_CHOICES = (AUTO_UNITS,) + tuple(UNITS_PER_MM)
SYNTH_CROPS = ("random", "face", "front", "head", "shoulders")  # palnet synth --crop (see synth._fixed_crop_mask)
# How many times predict samples a scan's surface and averages the network's answers
# (pipeline.predict's ``samplings``; what more of them gain and cost: README, "Accuracy and speed").
DEFAULT_SAMPLINGS = 1
MAX_SAMPLINGS = 8
