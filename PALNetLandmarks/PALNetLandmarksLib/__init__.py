"""Helpers of the PALNetLandmarks Slicer module.

- :mod:`PALNetLandmarksLib.mrml`: MRML nodes <-> palnet data (model node -> Mesh in world RAS, or a
  surface file for the child process; landmarks -> markups point list; measurements and training
  history -> table and plot nodes).
- :mod:`PALNetLandmarksLib.background`: child processes through ``qt.QProcess``, read from a timer.
- :mod:`PALNetLandmarksLib.runner`: the child that predicts (Apply) or runs a batch, and its event lines
  (no Slicer, no Qt).
- :mod:`PALNetLandmarksLib.training`: the ``palnet train`` command line and its log parser (no Slicer, no Qt).
"""
