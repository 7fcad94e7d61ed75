"""Mesh file formats, one module each; :mod:`palnet.mesh_io` is the way in (read_mesh, write_mesh).

Every reader here takes any bytes without crashing or allocating more than the file can
hold, and reports a problem as one line naming the file:

- :mod:`.ply` (with :mod:`.ply_elements`, the records after the header) and
  :mod:`.vtk_legacy` read their files here, into the numbers VTK's readers give;
- :mod:`.obj`, :mod:`.stl` and :mod:`.vtp` check a file, then VTK's reader reads it;
- :mod:`.checks`: bounded reads, count checks and one-line errors the formats share;
- :mod:`.polydata`: meshes as vtkPolyData, and reading with VTK's readers.

No module here imports :mod:`palnet.mesh_io`.
"""
