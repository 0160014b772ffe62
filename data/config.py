"""The reader's network section (composed into :class:`serwild.config.Config` as ``remote``).

How patient every read of a remote build is (``train.shards``/``out`` as a URL, ``serwild
evaluate --shards URL``, ``serwild verify URL``): each connect and each read gives up after
``timeout_s``; a failed read is tried ``1 + retries`` times, waiting ``backoff_s``, 2×, 4×…
(at most ``backoff_max_s``) in between, and a stream resumes where it stopped. Local
folders ignore it. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass

from serwild.data.remote import RemoteOptions


@dataclass(frozen=True)
class RemoteConfig:
    timeout_s: float = 30.0  # every connect and every read
    retries: int = 3  # per failure (progress resets the count)
    backoff_s: float = 0.5  # first wait between tries, doubling
    backoff_max_s: float = 8.0  # longest wait between tries

    def __post_init__(self) -> None:
        if not self.timeout_s > 0 or self.retries < 0 or self.backoff_s < 0 or self.backoff_max_s < 0:
            raise ValueError("remote.timeout_s must be > 0 and remote.retries, remote.backoff_s, "
                             "remote.backoff_max_s >= 0")

    def options(self) -> RemoteOptions:
        return RemoteOptions(timeout_s=self.timeout_s, retries=self.retries, backoff_s=self.backoff_s,
                             backoff_max_s=self.backoff_max_s)
