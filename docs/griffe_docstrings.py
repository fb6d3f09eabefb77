"""A griffe extension for the docs build: the package's docstrings are Google style with reST roles, which griffe
renders as they are written. Two rewrites, made while the docstrings load:

- a section headed ``Example:`` becomes ``Examples:``: Google style allows both, but griffe reads only the plural as
  an examples section and renders the singular as an admonition whose ``>>>`` lines become nested quotes;
- a role such as ``:class:`~lightning_micro.core.tensor_train.TTLinear``` becomes the code span ``TTLinear`` (the
  name after the last dot when the target starts with ``~``, as Sphinx shows it).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

EXAMPLE_HEADING = re.compile(r"^(\s*)Example:\s*$", re.M)
ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):`(~?)([^`]+)`")


def _code_span(match: re.Match) -> str:
    target = match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"


class ReadableDocstrings(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            text = EXAMPLE_HEADING.sub(r"\1Examples:", obj.docstring.value)
            obj.docstring.value = ROLE.sub(_code_span, text)
