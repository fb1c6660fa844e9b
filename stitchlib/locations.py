"""Where stitchlib keeps things: the artifact store, figures, datasets, pretrained weights and
the notebooks it ships.

Each folder is, in order:

1. its environment variable, when set and non-empty (made absolute at once, so a later ``chdir``
   does not move it): ``$STITCHLIB_STORE``, ``$STITCHLIB_FIGURES``, ``$STITCHLIB_DATA``,
   ``$STITCHLIB_WEIGHTS``;
2. inside a source checkout (the package imported from a clone of the repository, editable or
   ``PYTHONPATH``), a folder of the checkout: ``runs/store``, ``figures``, ``data`` and
   ``data/weights``;
3. otherwise (an installed copy in site-packages), the same layout under the per-user data folder
   of ``platformdirs`` (``user_data_dir("stitchlib")``: ``~/.local/share/stitchlib`` on Linux, or
   ``$XDG_DATA_HOME/stitchlib``; ``~/Library/Application Support/stitchlib`` on macOS;
   ``%LOCALAPPDATA%\\stitchlib`` on Windows): ``store``, ``figures``, ``data`` and
   ``data/weights``. The data folder is a data folder, not a cache folder, on purpose: it may
   hold a dataset put there by hand, which a cache cleaner must not delete.

None of them depends on the current directory. ``figures_dir`` is the root; callers append the
profile. An installed copy never writes beside itself (into site-packages).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

__all__ = ["PACKAGE_DIR", "APP_NAME", "checkout_root", "in_checkout", "user_dir", "store_dir", "figures_dir",
           "data_dir", "weights_dir", "notebooks_dir", "shared_data_dir"]

PACKAGE_DIR = Path(__file__).resolve().parent
APP_NAME = "stitchlib"

STORE_ENV = "STITCHLIB_STORE"
FIGURES_ENV = "STITCHLIB_FIGURES"
DATA_ENV = "STITCHLIB_DATA"
WEIGHTS_ENV = "STITCHLIB_WEIGHTS"


def _is_checkout(folder: Path) -> bool:
    """Whether `folder` is this project's source tree: a pyproject.toml naming stitchlib, and notebooks/."""
    pyproject = folder / "pyproject.toml"
    if not pyproject.is_file() or not (folder / "notebooks").is_dir():
        return False
    try:
        return tomllib.loads(pyproject.read_text())["project"]["name"] == APP_NAME
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError):
        return False


def checkout_root() -> Path | None:
    """The source checkout the package runs from (the folder holding pyproject.toml), or None when
    it runs from an installed copy."""
    root = PACKAGE_DIR.parent
    return root if _is_checkout(root) else None


def in_checkout() -> bool:
    return checkout_root() is not None


def user_dir() -> Path:
    """The per-user folder of an installed copy: platformdirs' ``user_data_dir("stitchlib")``."""
    import platformdirs  # only an installed copy needs it

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)).expanduser().absolute()


def _from_env(name: str, resolve: bool = False) -> Path | None:
    value = os.environ.get(name)
    if not value:
        return None
    path = Path(value).expanduser()
    return path.resolve() if resolve else path.absolute()


def _default(in_the_checkout: str, per_user: str) -> Path:
    root = checkout_root()
    return root / in_the_checkout if root is not None else user_dir() / per_user


def store_dir() -> Path:
    """``$STITCHLIB_STORE``, else ``<checkout>/runs/store``, else ``<user data dir>/store``."""
    return _from_env(STORE_ENV) or _default("runs/store", "store")


def figures_dir() -> Path:
    """The root of the figures folders (callers append the profile): ``$STITCHLIB_FIGURES``, else
    ``<checkout>/figures``, else ``<user data dir>/figures``."""
    return _from_env(FIGURES_ENV) or _default("figures", "figures")


def data_dir() -> Path:
    """The datasets' root: ``$STITCHLIB_DATA`` (symbolic links resolved, as it always was), else
    ``<checkout>/data``, else ``<user data dir>/data``."""
    return _from_env(DATA_ENV, resolve=True) or _default("data", "data")


def weights_dir() -> Path:
    """Pretrained ImageNet weights: ``$STITCHLIB_WEIGHTS``, else ``<checkout>/data/weights``, else
    ``<user data dir>/data/weights`` (not under ``$STITCHLIB_DATA``, as in a checkout)."""
    return _from_env(WEIGHTS_ENV) or _default("data/weights", "data/weights")


def shared_data_dir(root: Path | None = None) -> Path | None:
    """``<checkout>/../shared/data`` (where this project's machines keep the CIFAR-10 archive), only
    for a checkout: None for an installed copy. `root` defaults to ``checkout_root()``."""
    root = checkout_root() if root is None else root
    return root.parent / "shared" / "data" if root is not None else None


def notebooks_dir() -> Path:
    """The notebooks ``python -m stitchlib notebooks`` copies: the checkout's notebooks/, else the
    copy shipped in the wheel (the package ``stitchlib._notebooks``, built from notebooks/)."""
    root = checkout_root()
    return root / "notebooks" if root is not None else PACKAGE_DIR / "_notebooks"
