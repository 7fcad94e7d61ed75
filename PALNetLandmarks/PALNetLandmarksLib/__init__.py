"""Helpers of the PALNetLandmarks Slicer module.

- :mod:`PALNetLandmarksLib.mrml`: MRML nodes <-> palnet data (model node -> Mesh in world RAS,
  landmarks -> markups point list, training history -> table and plot nodes).
- :mod:`PALNetLandmarksLib.training`: the ``palnet train`` background process and its log parser
  (no Slicer, no Qt: testable with plain Python).
"""
