"""napari views over the core: reader, writer, sample data, and dock widgets.

Widgets stay thin: they observe the evented session state in :mod:`.state`, start the
core's generators in napari's thread workers, and turn results into layers.
"""

from .gc_freeze import freeze_alive
from .shader_parsing import linear_comment_stripping

freeze_alive()  # before the docks' imports: the full collections they set off scan less
linear_comment_stripping()  # before the docks' first layers are drawn
