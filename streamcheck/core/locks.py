"""The locks the core keeps its shared state under, made by one factory.

The auditor's lock (its kept accesses) and the clocks' lock (their ticks and merges) are taken
on every declared access and every merge, by Python and by the compiled core. Python's own
``threading.Lock`` parses its arguments at every ``acquire``, from C too; once the compiled
core is chosen, :data:`make_lock` makes its ``FastLock`` instead (``streamcheck/_fast_lock.c``:
the same kind of lock, which the compiled parts take without a call), chosen by
``streamcheck.wrappers.speedups`` as it chooses the core's other parts. Locks made before a
change of core keep their kind: either kind is taken correctly by either core.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

#: Makes a lock as ``threading.Lock`` does (not reentrant, any thread may release it).
make_lock: Callable[[], Any] = threading.Lock
