"""The reader's network section (composed into :class:`serwild.config.Config` as ``remote``).

It is :class:`~serwild.data.fetch.RemoteOptions` itself, one type from the config file to
every read: how a remote build is reached (``endpoint_url``, ``anon`` for s3://) and how
patient every read is (``timeout_s``, ``retries``, ``backoff_s``, ``backoff_max_s``).
Local folders ignore it. No torch here.
"""

from __future__ import annotations

from serwild.data.fetch import RemoteOptions

RemoteConfig = RemoteOptions

__all__ = ["RemoteConfig"]
