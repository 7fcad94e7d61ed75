"""MRML nodes <-> palnet data: the only place where the Slicer scene meets the pipeline.

Coordinates: palnet works in whatever frame it is given. The module gives it the
model's surface in world RAS (the parent transform, linear or not, applied to a
copy; the node itself is never changed) and writes the landmarks it gets back as
world RAS positions, so they sit on the surface as the user sees it.
"""
from typing import Dict, Iterable, Optional, Sequence

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer

from palnet.errors import PalnetError
from palnet.mesh_io import polydata_to_mesh
from palnet.landmark_io import describe
from palnet.protocol import Protocol
from palnet.datatypes import Landmarks, Mesh

# One colour for the whole point list (markups colours are per node); saturated
# cyan reads well on skin-coloured surfaces in light and dark backgrounds.
POINT_LIST_COLOR = (0.0, 0.85, 0.95)
GLYPH_FRACTION_OF_DIAGONAL = 0.015  # point diameter relative to the scan's bounding-box diagonal
TEXT_SCALE = 2.5

ATTRIBUTE_PREFIX = "PALNet."


def worldPolyData(modelNode) -> vtk.vtkPolyData:
    """A copy of the model's surface in world coordinates (parent transforms applied)."""
    if modelNode is None:
        raise PalnetError("no input model selected")
    name = modelNode.GetName()
    polydata = modelNode.GetPolyData()
    if polydata is None or polydata.GetNumberOfPoints() == 0:
        raise PalnetError("the model has no surface (no points)", name)
    transformNode = modelNode.GetParentTransformNode()
    if transformNode is None:
        copy = vtk.vtkPolyData()
        copy.DeepCopy(polydata)
        return copy
    toWorld = vtk.vtkGeneralTransform()
    transformNode.GetTransformToWorld(toWorld)
    transformer = vtk.vtkTransformPolyDataFilter()
    transformer.SetTransform(toWorld)
    transformer.SetInputData(polydata)
    transformer.Update()
    return transformer.GetOutput()


def meshFromModelNode(modelNode) -> Mesh:
    """The model's surface as a palnet Mesh in world RAS.

    Points with bit-identical coordinates are merged, so a textured OBJ (which
    VTK splits at every face corner) becomes one connected surface again.
    """
    return polydata_to_mesh(worldPolyData(modelNode), units="mm", source=modelNode.GetName(),
                            merge_identical_points=True)


def writeWorldSurface(modelNode, path: str) -> None:
    """The model's surface in world coordinates (as :func:`worldPolyData`) to a VTK XML polydata file.

    For the prediction process: points, polygons and strips only (what the Mesh is made
    of), raw binary, so writing costs little time in Slicer's main thread. The child
    reads it with ``polydata_to_mesh(..., merge_identical_points=True)``, exactly as
    :func:`meshFromModelNode` does in-process.
    """
    polydata = modelNode.GetPolyData() if modelNode is not None else None
    if polydata is not None and polydata.GetNumberOfPoints() and modelNode.GetParentTransformNode() is None:
        world = polydata  # already in world coordinates: written as it is, no copy (a copy is most of the time)
    else:
        world = worldPolyData(modelNode)
    surface = vtk.vtkPolyData()
    surface.SetPoints(world.GetPoints())
    surface.SetPolys(world.GetPolys())
    surface.SetStrips(world.GetStrips())
    writer = vtk.vtkXMLPolyDataWriter()
    writer.SetFileName(str(path))
    writer.SetInputData(surface)
    writer.SetCompressorTypeToNone()
    writer.SetDataModeToAppended()
    writer.EncodeAppendedDataOff()
    if not writer.Write():
        raise PalnetError("could not write the surface for the prediction process", path)


def glyphSizeFor(mesh: Mesh) -> float:
    """Absolute point size: a fixed fraction of the scan's bounding-box diagonal, in its units."""
    extent = mesh.vertices.max(axis=0) - mesh.vertices.min(axis=0)
    return glyphSizeForDiagonal(float(np.linalg.norm(extent)))


def glyphSizeForDiagonal(diagonal: float) -> float:
    return diagonal * GLYPH_FRACTION_OF_DIAGONAL if diagonal > 0 else 1.0


def protocolForModel(metadata: dict) -> Protocol:
    """The landmark protocol a model was trained for; bare labels give a minimal protocol."""
    stored = metadata.get("protocol") or {}
    labels = list(stored.get("labels") or [])
    if stored.get("landmarks"):
        protocol = Protocol.from_dict({k: v for k, v in stored.items() if k != "labels"})
        if not labels or protocol.labels == labels:
            return protocol
    if not labels:
        raise PalnetError("the model file names no landmarks (metadata has no protocol labels)")
    return Protocol.from_labels(labels)


def newPointListNode(scene, name: str):
    """A new, empty markups point list with its display node."""
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", scene.GenerateUniqueName(name))
    node.CreateDefaultDisplayNodes()
    return node


def fillPointList(node, landmarks: Landmarks, protocol: Optional[Protocol] = None, lockPoints: bool = False,
                  glyphSize: Optional[float] = None, attributes: Optional[Dict[str, str]] = None) -> None:
    """Replace the node's control points by ``landmarks`` (world RAS), one point per landmark.

    Label: the protocol's abbreviation; description: full name and confidence
    (:func:`palnet.landmark_io.describe`, the same text palnet writes to files).
    """
    points = np.asarray(landmarks.points, dtype=np.float64).reshape(-1, 3)
    missing = ~np.isfinite(points).all(axis=1)  # the scan does not show it: a missing control point
    confidence = landmarks.confidence
    wasModifying = node.StartModify()
    try:
        node.RemoveAllControlPoints()
        vtkPoints = vtk.vtkPoints()
        vtkPoints.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(np.where(missing[:, None], 0.0, points)),
                                                     deep=True))
        node.SetControlPointPositionsWorld(vtkPoints)
        for i in np.flatnonzero(missing):
            node.SetNthControlPointPositionMissing(int(i))
        for i, label in enumerate(landmarks.labels):
            name = protocol.definition(label).name if protocol is not None and label in protocol else label
            conf = None if confidence is None else float(confidence[i])
            node.SetNthControlPointLabel(i, label)
            node.SetNthControlPointDescription(i, describe(name, conf))
            node.SetNthControlPointLocked(i, bool(lockPoints))
        for key, value in (attributes or {}).items():
            node.SetAttribute(ATTRIBUTE_PREFIX + key, str(value))
    finally:
        node.EndModify(wasModifying)
    styleDisplayNode(node, glyphSize)


def styleDisplayNode(node, glyphSize: Optional[float] = None) -> None:
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is None:
        return
    display.SetColor(*POINT_LIST_COLOR)
    display.SetSelectedColor(*POINT_LIST_COLOR)  # control points are "selected" by default
    display.SetTextScale(TEXT_SCALE)
    display.SetPointLabelsVisibility(True)
    if glyphSize is not None and np.isfinite(glyphSize) and glyphSize > 0:
        display.SetUseGlyphScale(False)  # absolute size, so it follows the scan's size
        display.SetGlyphSize(float(glyphSize))


def controlPointsWorld(node) -> np.ndarray:
    """(N, 3) world positions of a point list's control points; NaN for a missing or undefined one."""
    out = np.zeros((node.GetNumberOfControlPoints(), 3))
    for i in range(out.shape[0]):
        if node.GetNthControlPointPositionStatus(i) != node.PositionDefined:
            out[i] = np.nan
            continue
        node.GetNthControlPointPositionWorld(i, out[i])
    return out


# ---------------------------------------------------------------- training history

TRAINING_SERIES = (("loss", "training loss"), ("val_pointwise_mm", "validation point-wise error"),
                   ("val_distancewise_mm", "validation distance-wise error"))
TRAINING_COLORS = ((0.35, 0.35, 0.35), (0.0, 0.45, 1.0), (0.9, 0.0, 0.8))


def newTrainingTable(scene, name: str, columns: Sequence[str]):
    """A table node with one double column per name (epoch first)."""
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    for column in columns:
        array = vtk.vtkDoubleArray()
        array.SetName(column)
        table.AddColumn(array)
    return table


def appendTableRow(table, row: Dict[str, float]) -> None:
    """Add one row; columns missing from ``row`` get NaN."""
    vtkTable = table.GetTable()
    for c in range(vtkTable.GetNumberOfColumns()):
        array = vtkTable.GetColumn(c)
        array.InsertNextValue(float(row.get(array.GetName(), float("nan"))))
    vtkTable.Modified()
    table.Modified()


def newTrainingChart(scene, table, title: str, series: Iterable = TRAINING_SERIES):
    """A plot chart showing each (column, title) of ``series`` against the epoch column."""
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(title))
    chart.SetTitle(title)
    chart.SetXAxisTitle("epoch")
    chart.SetYAxisTitle("mm")
    for (column, label), color in zip(series, TRAINING_COLORS):
        plot = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", label)
        plot.SetAndObserveTableNodeID(table.GetID())
        plot.SetXColumnName("epoch")
        plot.SetYColumnName(column)
        plot.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        plot.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        plot.SetColor(*color)
        chart.AddAndObservePlotSeriesNodeID(plot.GetID())
    return chart


# ---------------------------------------------------------------- measurements

MEASUREMENT_COLUMNS = (("name", "string"), ("value", "double"), ("units", "string"), ("SE", "double"),
                       ("z", "double"), ("id", "string"), ("landmarks", "string"))
MEASUREMENTS_REFERENCE = "PALNetMeasurements"  # point list -> its measurements table


def measurementsTableFor(pointList, title: str):
    """The point list's measurements table (refilled on every Apply into that list), made when missing."""
    scene = pointList.GetScene()
    table = pointList.GetNodeReference(MEASUREMENTS_REFERENCE)
    if table is None or table.GetScene() is None:
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(title))
        pointList.SetNodeReferenceID(MEASUREMENTS_REFERENCE, table.GetID())
    return table


def fillMeasurementsTable(table, rows: Sequence[dict]) -> None:
    """One table row per measurement: name, value, units, SE, z (NaN where there is none), id, landmarks."""
    vtkTable = vtk.vtkTable()
    for name, kind in MEASUREMENT_COLUMNS:
        array = vtk.vtkStringArray() if kind == "string" else vtk.vtkDoubleArray()
        array.SetName(name)
        array.SetNumberOfValues(len(rows))
        vtkTable.AddColumn(array)
    for r, row in enumerate(rows):
        values = {"name": row["name"], "value": row["value"], "units": row["units"], "SE": row["se"], "z": row["z"],
                  "id": row["id"], "landmarks": " ".join(row.get("landmarks") or ())}
        for c, (name, kind) in enumerate(MEASUREMENT_COLUMNS):
            value = values[name]
            if kind == "string":
                vtkTable.GetColumn(c).SetValue(r, str(value))
            else:
                vtkTable.GetColumn(c).SetValue(r, float("nan") if value is None else float(value))
    table.SetAndObserveTable(vtkTable)
    table.Modified()

