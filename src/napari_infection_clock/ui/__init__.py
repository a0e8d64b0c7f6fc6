"""napari views over the core: reader, writer, sample data, and dock widgets.

Widgets stay thin: they observe the evented session state in :mod:`.state`, start the
core's generators in napari's thread workers, and turn results into layers.
"""

from .shader_parsing import linear_comment_stripping

linear_comment_stripping()  # before the docks' first layers are drawn
