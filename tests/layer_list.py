"""napari's layer list as a person uses it: a click on a layer's name selects it, a click
on its eye hides or shows it, F2 edits its name, the trash button
deletes the selected layers."""

from __future__ import annotations

from qtpy.QtCore import QPoint, Qt
from qtpy.QtTest import QTest
from qtpy.QtWidgets import QApplication, QLineEdit, QStyle, QStyleOptionViewItem

LEFT = Qt.MouseButton.LeftButton


def _row(viewer, layer):
    view = viewer.window._qt_viewer.layers
    model = view.model()  # rows run top layer first, as a person sees them
    rows = [model.index(row, 0) for row in range(model.rowCount())]
    index = next(i for i in rows if i.data(Qt.ItemDataRole.DisplayRole) == layer.name)
    view.scrollTo(index)
    return view, index


def click_layer(viewer, layer, add: bool = False) -> None:
    """Click the layer's name in the layer list: it alone is selected, and active (with
    ``add``, a Ctrl+click: it joins the selection)."""
    view, index = _row(viewer, layer)
    rect = view.visualRect(index)
    modifier = Qt.KeyboardModifier.ControlModifier if add else Qt.KeyboardModifier.NoModifier
    QTest.mouseClick(view.viewport(), LEFT, modifier,
                     QPoint(rect.left() + rect.width() * 2 // 3, rect.center().y()))
    QApplication.processEvents()


def click_eye(viewer, layer) -> None:
    """Click the layer's eye (its visibility box) in the layer list."""
    view, index = _row(viewer, layer)
    option = QStyleOptionViewItem()
    option.rect = view.visualRect(index)
    option.widget = view
    view.itemDelegate().initStyleOption(option, index)
    eye = view.style().subElementRect(QStyle.SubElement.SE_ItemViewItemCheckIndicator,
                                      option, view)
    QTest.mouseClick(view.viewport(), LEFT, pos=eye.center())
    QApplication.processEvents()


def rename_layer(viewer, layer, name: str) -> None:
    """Click the layer in the layer list, press F2 (its edit key; a double click does the
    same), type ``name``, press Enter."""
    click_layer(viewer, layer)
    view, index = _row(viewer, layer)
    view.setCurrentIndex(index)
    QTest.keyClick(view, Qt.Key.Key_F2)
    QApplication.processEvents()
    editor = next((e for e in view.findChildren(QLineEdit) if e.isVisible()), None)
    assert editor is not None, "no name editor opened"
    editor.selectAll()
    QTest.keyClicks(editor, name)
    QTest.keyClick(editor, Qt.Key.Key_Return)
    QApplication.processEvents()


def delete_selected(viewer) -> None:
    """The layer list's trash button: deletes the selected layers."""
    QTest.mouseClick(viewer.window._qt_viewer.layerButtons.deleteButton, LEFT)
    QApplication.processEvents()
