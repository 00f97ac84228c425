"""The models and data a recipe names instead of paths: `smoke:NAME` (the tiny models and hub-layout files of
`--scale smoke`, rmlora.assets.smoke) and `asset:NAME[/FILE]` (the real offline models and data of
docs/RESULTS.md, rmlora.assets.offline). Each is built on first use, then cached, so no run needs a download."""

from __future__ import annotations

from rmlora.assets.offline import resolve_asset
from rmlora.assets.smoke import smoke_asset, smoke_asset_path
from rmlora.errors import AssetError
from rmlora.recipes.cells import ASSET_PREFIX, SMOKE_PREFIX, Resolver


def asset_resolver(smoke_dir: str | None = None, assets_dir: str | None = None, build: bool = True) -> Resolver:
    """A token "smoke:NAME" or "asset:NAME/FILE" -> its path, built if missing (`build`), or only where it would
    be (dry runs)."""

    def resolve(token: str) -> str:
        if token.startswith(SMOKE_PREFIX):
            name = token[len(SMOKE_PREFIX) :]
            return smoke_asset(name, smoke_dir) if build else smoke_asset_path(name, smoke_dir)
        if token.startswith(ASSET_PREFIX):
            try:
                return resolve_asset(token[len(ASSET_PREFIX) :], assets_dir, build)
            except AssetError:
                if build:
                    raise
                return token  # a dry run shows what it cannot locate as written (e.g. a package not installed)
        return token

    return resolve
