"""Raw files looked up by ID, remembered while the raw-file index keeps its version.

Every job creation checks its raw IDs (which pipeline claims them, their frames); asking
the store each time was one ``aggregate`` per POST (~0.3 ms of SecantusDB's CPU, plus its
profile-settings lookup). Requests name the same frames again and again (a portal's
"reduce this" button, a script looping over parameters), so the files found are kept:

- valid while the index's version (`Store.raw_files_version`, bumped before and after
  every index write) is the one they were read under; the version is read again at most
  every ``recheck_s`` (one read shared by concurrent callers), so a removed or
  re-annotated file is seen within ``recheck_s`` plus the read;
- only files found: an ID not in the cache is looked up, so a file just indexed is never
  refused;
- at most ``max_files``, the least recently asked for forgotten first: memory does not
  grow with the archive.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Sequence

from soda_reduce.reduction.index_model import RawFile
from soda_reduce.runtime.store import Store

RECHECK_S = 1.0
MAX_FILES = 10_000


class KnownRawFiles:
    def __init__(
        self, store: Store, *, recheck_s: float = RECHECK_S, max_files: int = MAX_FILES
    ) -> None:
        self.store = store
        self.recheck_s = recheck_s
        self.max_files = max_files
        self._files: OrderedDict[str, RawFile] = OrderedDict()
        self._version: int | None = None
        self._checked = float("-inf")
        self._reading: asyncio.Task[int] | None = None

    async def by_id(self, ids: Sequence[str]) -> dict[str, RawFile]:
        """The indexed files among ``ids`` (unknown IDs are left out)."""
        await self._current()
        missing = [i for i in dict.fromkeys(ids) if i not in self._files]
        if missing:
            version = self._version
            found = await self.store.raw_files_by_id(missing)
            if version == self._version:  # not read across a version change
                for raw in found:
                    self._files[raw.file_id] = raw
            known = {raw.file_id: raw for raw in found}
        else:
            known = {}
        for file_id in ids:
            raw = self._files.get(file_id)
            if raw is not None:
                self._files.move_to_end(file_id)
                known[file_id] = raw
        while len(self._files) > self.max_files:
            self._files.popitem(last=False)
        return known

    async def _current(self) -> None:
        """Forget every file if the index's version moved (read at most every recheck_s)."""
        if time.monotonic() - self._checked < self.recheck_s:
            return
        if self._reading is None or self._reading.done():
            self._reading = asyncio.create_task(self.store.raw_files_version())
        reading = self._reading
        version = await asyncio.shield(reading)
        if reading is not self._reading:
            return  # a later read has taken over
        self._checked = time.monotonic()
        if version != self._version:
            self._files.clear()
            self._version = version
