"""The reader's network section (``remote`` in :class:`serwild.config.Config`): it is
:class:`~serwild.data.fetch.RemoteOptions` itself, one type from the config file to every read. No torch here.
"""

from __future__ import annotations

from serwild.data.fetch import RemoteOptions

RemoteConfig = RemoteOptions

__all__ = ["RemoteConfig"]
