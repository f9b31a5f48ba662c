"""Progress bars: a tqdm bar (a notebook widget when ipywidgets is installed, text otherwise)."""
from __future__ import annotations

import warnings

__all__ = ["progress"]


def progress(total: int, enabled: bool, desc: str | None = None, unit: str = "step"):
    """A bar of ``total`` units, shown only when ``enabled``; use it as a context manager or call close()."""
    with warnings.catch_warnings():  # tqdm.auto warns (with a file path) when ipywidgets is missing
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, smoothing=0.1,
                mininterval=1.0)
