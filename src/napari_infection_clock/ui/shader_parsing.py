"""vispy's parse of a shader program's variables, its comment stripping made linear.

The first draw of every vispy visual parses its program's GLSL for uniforms and attributes
(``vispy.gloo.Program._parse_variables_from_code``), first stripping ``//`` comments with
``re.sub(r"(.*)(//.*)", r"\\1", code, flags=re.M)``. That pattern backtracks over every
start position of every line: on a text visual's program (80 KB of GLSL: every canvas
text, a colorbar's tick labels, a Shapes layer's text) it costs 30-60 ms of the GUI thread
on a 2-core machine, inside the paint that first shows the visual. Here the module's
``re.sub`` is handed that one pattern's job done line by line (cut at the line's last
``//``, which is what the greedy pattern keeps): the same text, in well under a
millisecond. Every other call goes to :func:`re.sub` unchanged; where vispy changes the
pattern, the regular expression runs as before.
"""

from __future__ import annotations

import re
import types

#: The comment-stripping call in vispy.gloo.program (vispy 0.17).
COMMENTS = (r"(.*)(//.*)", r"\1", re.M)


def strip_line_comments(code: str) -> str:
    """``code`` with each line cut at its last ``//``: ``re.sub(*COMMENTS)``, in linear time."""
    return "\n".join(line[:line.rindex("//")] if "//" in line else line
                     for line in code.split("\n"))


def _sub(pattern, repl, string, count=0, flags=0):
    if (pattern, repl, flags) == COMMENTS and not count:
        return strip_line_comments(string)
    return re.sub(pattern, repl, string, count=count, flags=flags)


def linear_comment_stripping() -> None:
    """Have vispy's shader parsing strip comments in linear time (idempotent)."""
    from vispy.gloo import program

    if program.re is re:  # not yet replaced
        linear = types.ModuleType("re_with_linear_comment_stripping")
        linear.__dict__.update(vars(re))
        linear.sub = _sub
        program.re = linear
