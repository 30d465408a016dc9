"""circuitsvis views rendered offline, from the JavaScript bundle inside the installed circuitsvis package.

circuitsvis's own ``render()`` builds a CDN version of every view (``str()`` and ``show_code()`` return it) and
its ``_repr_html_`` opens ``http://google.com`` to decide which one to show. Nothing here calls either: we read
its bundled ``dist/cdn/iife.js`` once, inline it into the page, and call ``CircuitsVis.render(id, Component,
props)`` ourselves, so a view needs no network at any point.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

from ..errors import CodeCircuitsError

#: the circuitsvis React components the report uses, and what they show
COMPONENTS = {
    "AttentionHeads": "attention patterns of a group of heads (thumbnails, one enlarged on click/hover)",
    "TextNeuronActivations": "activations of chosen neurons coloured over the tokens of a text",
    "ColoredTokens": "tokens coloured by one value each",
}


def bundle_path() -> Path:
    """Path of circuitsvis's bundled JavaScript (``circuitsvis/dist/cdn/iife.js``), found without importing it."""
    spec = importlib.util.find_spec("circuitsvis")
    if spec is None or not spec.submodule_search_locations:
        raise CodeCircuitsError(
            "circuitsvis is not installed; attention views need its bundled JavaScript. Install it with "
            "`pip install 'circuitsvis>=1.43'` (it is a dependency of codecircuits)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "dist" / "cdn" / "iife.js"
    if not path.is_file():
        raise CodeCircuitsError(f"circuitsvis is installed but its JavaScript bundle is missing: {path}")
    return path


@functools.lru_cache(maxsize=1)
def bundle_js() -> str:
    """circuitsvis's JavaScript, made safe to inline in a classic ``<script>``: it defines ``window.CircuitsVis``.

    The source-map comment is dropped (a browser's developer tools would try to fetch ``iife.js.map``) and the
    one ``</script>`` inside a string literal is escaped so the HTML parser does not end the element there.
    """
    js = bundle_path().read_text(encoding="utf-8")
    js = re.sub(r"//# sourceMappingURL=\S*\s*$", "", js)
    js = re.sub(r"</(script)", r"<\\/\1", js, flags=re.IGNORECASE)
    if "<!--" in js:
        js = js.replace("<!--", "<\\!--")
    return js
