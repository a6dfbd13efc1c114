"""A controller work queue with client-go workqueue semantics on an injectable clock.

Why this module exists: the reconcile loop runs in two places, on real worker threads
against a cluster and inside a discrete-event simulator on a virtual clock. Both need
the same queue rules, so the queue is one plain data structure with a non-blocking API.
Time comes only from the injected ``clock``. A simulator can therefore jump straight to
:meth:`WorkQueue.next_ready_at` instead of sleeping.

The rules (the same as client-go's ``workqueue``):

* **One entry per key.** Adding a key that is already queued does nothing. Many
  events for one object collapse into one reconcile.
* **dirty / processing.** A key handed out by :meth:`~WorkQueue.get` is *processing*
  until :meth:`~WorkQueue.done`. It is never handed to a second worker in that time,
  so one object is never reconciled concurrently. An ``add`` during processing marks
  the key *dirty*, and it is handed out exactly once more after ``done``. The event
  that came in during the reconcile is not lost.
* **Two kinds of delay, kept apart.** :meth:`~WorkQueue.add_after` means "look again
  later" (RequeueAfter). If the key is already waiting, the earliest wake-up wins, and
  an immediate ``add`` makes it ready now. :meth:`~WorkQueue.add_rate_limited` means
  "that failed, retry with backoff". Its per-key exponential backoff is reset by
  :meth:`~WorkQueue.forget`. It can also be capped by an optional overall token
  bucket, taking the larger of the two delays as client-go's MaxOf limiter does.

A key is always in at most one of *queued* (dirty) and *waiting* (delay heap). Its
*processing* flag is independent of both. A pending run always satisfies any later
request for a run no sooner than it, so extra requests fold into it. That is why a
delayed key never runs twice for one request.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["NotProcessingError", "WorkQueue"]

K = TypeVar("K", bound=Hashable)

#: Largest exponent used for the backoff. ``2.0 ** 1024`` overflows a float, and by
#: then the delay has long been capped at ``max_delay`` anyway.
_MAX_EXPONENT = 1023


class NotProcessingError(LookupError):
    """``done(key)`` was called for a key that no worker holds.

    Why it is an error and not ignored: it means the caller's bookkeeping is wrong. It
    may have called ``done`` twice, or for a key it never got from ``get``. Ignoring it
    could let a key be reconciled by two workers at once.
    """


class _TokenBucket:
    """An overall rate limit shared by all keys, like client-go's BucketRateLimiter.

    Why a reservation model: like ``golang.org/x/time/rate``'s ``Reserve``, each call
    takes one token *now* and may leave the bucket in debt. The delay it returns is how
    long until that token would have existed. A burst of calls therefore gets delays
    ``0, ..., 0, 1/qps, 2/qps, ...``, and the queue never has to poll the bucket. Time
    comes only from the ``now`` it is given, which is the queue's injected clock.
    """

    __slots__ = ("_qps", "_burst", "_tokens", "_last")

    def __init__(self, qps: float, burst: int) -> None:
        self._qps = qps
        self._burst = float(burst)
        self._tokens = float(burst)  # starts full, so the first `burst` calls are free
        self._last: float | None = None

    def reserve(self, now: float) -> float:
        """Take one token at ``now``. Return the delay (seconds, >= 0) until it is available."""
        if self._last is None or now > self._last:
            if self._last is not None:
                self._tokens = min(self._burst, self._tokens + (now - self._last) * self._qps)
            self._last = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0.0 else -self._tokens / self._qps


def _check_delay(delay_s: float) -> None:
    # NaN would break the heap ordering, and an infinite wake-up would stall a
    # simulator that jumps to next_ready_at(). Reject both at the door.
    if not math.isfinite(delay_s):
        raise ValueError(f"delay must be a finite number of seconds, got {delay_s!r}")


class WorkQueue(Generic[K]):
    """A deduplicating, rate-limited, delaying work queue with an injectable clock.

    All public methods are thread-safe behind one lock. Apart from
    :meth:`get_blocking`, none of them ever waits: the core API is for a simulator,
    and the blocking helper is a thin layer on top of it for real threads.

    Delayed keys move to the ready queue ("promotion") inside :meth:`get`,
    :meth:`get_blocking` and :meth:`promote_due`, based on ``clock()``. Until then they
    count in :attr:`waiting_count`. ``len(q)`` does not change on promotion.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        base_delay: float = 0.005,
        max_delay: float = 1000.0,
        rate_limit_qps: float | None = None,
        rate_limit_burst: int | None = None,
    ) -> None:
        """Create an empty queue.

        ``clock`` returns monotonic seconds. It is the only time source, so a simulator
        can pass a virtual clock. ``base_delay`` and ``max_delay`` shape the per-key
        backoff of :meth:`add_rate_limited`: ``base_delay * 2**failures``, capped at
        ``max_delay``. ``rate_limit_qps`` turns on the overall token bucket (default
        off). ``rate_limit_burst`` is its size and defaults to ``ceil(qps)``, at least 1.
        """
        if not callable(clock):
            raise TypeError("clock must be a callable returning monotonic seconds")
        if not (math.isfinite(base_delay) and math.isfinite(max_delay)):
            raise ValueError("base_delay and max_delay must be finite")
        if not 0.0 <= base_delay <= max_delay:
            raise ValueError(f"need 0 <= base_delay <= max_delay, got {base_delay!r}, {max_delay!r}")
        bucket: _TokenBucket | None = None
        if rate_limit_qps is not None:
            if not (math.isfinite(rate_limit_qps) and rate_limit_qps > 0):
                raise ValueError(f"rate_limit_qps must be a positive finite number, got {rate_limit_qps!r}")
            burst = max(1, math.ceil(rate_limit_qps)) if rate_limit_burst is None else rate_limit_burst
            if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
                raise ValueError(f"rate_limit_burst must be an int >= 1, got {rate_limit_burst!r}")
            bucket = _TokenBucket(float(rate_limit_qps), burst)
        elif rate_limit_burst is not None:
            raise ValueError("rate_limit_burst given without rate_limit_qps")

        self._clock = clock
        self._base_delay = float(base_delay)
        self._max_delay = float(max_delay)
        self._bucket = bucket
        # One lock for everything. The Condition lets get_blocking sleep until a
        # state change that could matter to it, without polling.
        self._cond = threading.Condition(threading.Lock())
        self._ready: deque[K] = deque()  # FIFO: exactly the dirty keys not processing
        self._dirty: set[K] = set()  # keys that need a run (ready, or queued behind processing)
        self._processing: set[K] = set()  # keys handed out and not yet done
        self._waiting: dict[K, tuple[float, int]] = {}  # key -> (wake-up, seq) of its live heap entry
        self._heap: list[tuple[float, int, K]] = []  # (wake-up, seq, key); may hold stale entries
        self._seq = itertools.count()  # unique tie-breaker: keys need not be orderable
        self._failures: dict[K, int] = {}  # per-key backoff exponent
        self._held: dict[K, float] = {}  # key -> clock time before which it must not run (see hold)
        self._shutdown = False

    # ------------------------------------------------------------------ adding

    def add(self, key: K) -> None:
        """Queue ``key`` to run now. This dedupes, and it cancels a pending delay for the key.

        If the key is being processed, it is marked dirty and handed out again after
        ``done``. Ignored after :meth:`shutdown`.
        """
        with self._cond:
            if not self._shutdown:
                self._enqueue_locked(key)

    def add_after(self, key: K, delay_s: float) -> None:
        """Queue ``key`` to run ``delay_s`` seconds from ``clock()`` ("requeue after").

        If the key is already waiting, the earlier wake-up wins. If it is already queued
        to run now, this does nothing, because that run comes sooner. ``delay_s <= 0``
        is the same as :meth:`add`. Ignored after :meth:`shutdown`.
        """
        _check_delay(delay_s)
        with self._cond:
            if not self._shutdown:
                self._add_after_locked(key, delay_s)

    def add_rate_limited(self, key: K) -> None:
        """Requeue ``key`` after a failure, with per-key exponential backoff.

        The delay is ``base_delay * 2**num_requeues(key)``, capped at ``max_delay``.
        If the token bucket is on, the delay is the larger of that and the bucket's
        delay. Every call counts as a requeue until :meth:`forget`. Ignored after
        :meth:`shutdown`.
        """
        with self._cond:
            if not self._shutdown:
                self._add_after_locked(key, self._when_locked(key))

    def hold(self, key: K, delay_s: float) -> None:
        """Run ``key`` again ``delay_s`` seconds from now and *not sooner*, whatever :meth:`add` calls
        come meanwhile: the server asked to wait (a 429's Retry-After). Events that arrive during the hold
        are not lost; they are served by the run at its end. Ignored after :meth:`shutdown`."""
        _check_delay(delay_s)
        with self._cond:
            if self._shutdown:
                return
            until = self._clock() + delay_s
            self._held[key] = max(until, self._held.get(key, until))
            if key in self._dirty and key not in self._processing:
                self._dirty.discard(key)
                try:
                    self._ready.remove(key)
                except ValueError:  # pragma: no cover - ready holds exactly the dirty keys not processing
                    pass
            else:
                self._dirty.discard(key)  # processing: done() must not hand it out again before the hold ends
            self._defer_locked(key, self._held[key])

    def forget(self, key: K) -> None:
        """Reset ``key``'s backoff. Call this after a successful reconcile.

        It drops the per-key counter entirely, so there is no garbage per key. It does
        not cancel a pending run or delay.
        """
        with self._cond:
            self._failures.pop(key, None)

    def num_requeues(self, key: K) -> int:
        """How many times ``key`` was :meth:`add_rate_limited` since its last :meth:`forget`."""
        with self._cond:
            return self._failures.get(key, 0)

    # ----------------------------------------------------------------- getting

    def get(self) -> K | None:
        """Hand out the oldest ready key, or return ``None``. Never blocks.

        Delayed keys whose wake-up is at or before ``clock()`` are promoted first. The
        key returned is *processing* until :meth:`done`. Returns ``None`` after
        :meth:`shutdown`.
        """
        with self._cond:
            key = self._take_locked()
            self._pass_baton_locked()
            return key

    def get_blocking(self, timeout_s: float | None = None) -> K | None:
        """Like :meth:`get`, but wait until a key is ready, shutdown, or ``timeout_s`` passes.

        This is for real worker threads only. It waits on the queue's Condition, which
        every relevant change notifies. When only delayed keys exist, it sleeps until
        the earliest wake-up, measured with the injected clock. For that reason the
        clock must advance in real seconds (e.g. ``time.monotonic``). Returns ``None``
        on shutdown or timeout.
        """
        if timeout_s is not None and math.isnan(timeout_s):
            raise ValueError("timeout_s must be a number or None")
        with self._cond:
            deadline = None if timeout_s is None else self._clock() + max(0.0, timeout_s)
            key = self._take_locked()
            while not self._shutdown and key is None and not self._expired_locked(deadline):
                self._cond.wait(self._wait_time_locked(deadline))
                key = self._take_locked()
            self._pass_baton_locked()
            return key

    def done(self, key: K) -> None:
        """Mark ``key`` finished. If it was added while processing, it becomes ready again.

        Raises :class:`NotProcessingError` if the key is not being processed.
        """
        with self._cond:
            if key not in self._processing:
                raise NotProcessingError(
                    f"done({key!r}): key is not being processed "
                    "(never handed out by get(), or done() already called)"
                )
            self._processing.remove(key)
            if key in self._dirty:
                self._ready.append(key)
                self._cond.notify()

    # ------------------------------------------------------------------- time

    def next_ready_at(self) -> float | None:
        """The earliest wake-up of a delayed key (clock seconds), or ``None`` if none wait.

        A simulator advances its virtual clock to this value. It may lie in the past
        if the key is due but has not been promoted yet.
        """
        with self._cond:
            return self._peek_locked()

    def promote_due(self) -> int:
        """Move every delayed key due at ``clock()`` into the queue. Return how many moved."""
        with self._cond:
            if self._shutdown:
                return 0
            moved = self._promote_due_locked()
            self._pass_baton_locked()
            return moved

    # -------------------------------------------------------------- lifecycle

    def shutdown(self) -> None:
        """Stop the queue. ``get`` returns ``None``, adds are ignored, and blocked getters wake.

        Pending work is dropped because it can never be handed out. Keys still
        processing stay tracked, so their workers can call :meth:`done`.
        """
        with self._cond:
            self._shutdown = True
            self._ready.clear()
            self._dirty.clear()
            self._waiting.clear()
            self._heap.clear()
            self._failures.clear()
            self._cond.notify_all()

    @property
    def is_shutdown(self) -> bool:
        """Whether :meth:`shutdown` has been called."""
        with self._cond:
            return self._shutdown

    # ------------------------------------------------------------- inspection

    def __len__(self) -> int:
        """Distinct keys queued or waiting. A key that is only processing is not counted."""
        with self._cond:
            return len(self._dirty) + len(self._waiting)

    @property
    def ready_count(self) -> int:
        """Keys that :meth:`get` can hand out without promotion (queued and not processing)."""
        with self._cond:
            return len(self._ready)

    @property
    def waiting_count(self) -> int:
        """Keys on the delay heap that have not been promoted yet."""
        with self._cond:
            return len(self._waiting)

    @property
    def processing_count(self) -> int:
        """Keys handed out and not yet :meth:`done`."""
        with self._cond:
            return len(self._processing)

    def __repr__(self) -> str:
        with self._cond:
            return (
                f"{type(self).__name__}(ready={len(self._ready)}, queued={len(self._dirty)}, "
                f"waiting={len(self._waiting)}, processing={len(self._processing)}, "
                f"shutdown={self._shutdown})"
            )

    # -------------------------------------------------- internals (lock held)

    def _enqueue_locked(self, key: K) -> None:
        """Make ``key`` dirty. It becomes ready unless a worker holds it. Cancels its delay."""
        if self._held:
            until = self._held.get(key)
            if until is not None:
                if until > self._clock():
                    self._defer_locked(key, until)  # the server asked us to wait: run at the hold's end
                    return
                del self._held[key]
        if self._waiting.pop(key, None) is not None:
            self._maybe_compact_locked()  # its heap entry just went stale
        if key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._ready.append(key)
            self._cond.notify()

    def _add_after_locked(self, key: K, delay_s: float) -> None:
        if delay_s <= 0:
            self._enqueue_locked(key)
            return
        if key in self._dirty:
            return  # it already runs next, which satisfies this later request
        when = self._clock() + delay_s
        current = self._waiting.get(key)
        if current is not None and current[0] <= when:
            return  # earliest wake-up wins
        head = self._peek_locked()
        seq = next(self._seq)
        self._waiting[key] = (when, seq)
        heapq.heappush(self._heap, (when, seq, key))
        if current is not None:
            self._maybe_compact_locked()  # the old entry is stale now
        if head is None or when < head:
            # The earliest wake-up moved earlier. Sleeping getters must recompute
            # their wait, or they would sleep past it.
            self._cond.notify_all()

    def _defer_locked(self, key: K, until: float) -> None:
        """Make ``key`` wait until exactly ``until`` (replacing an earlier or later wake-up)."""
        current = self._waiting.get(key)
        if current is not None and current[0] == until:
            return
        head = self._peek_locked()
        seq = next(self._seq)
        self._waiting[key] = (until, seq)
        heapq.heappush(self._heap, (until, seq, key))
        if current is not None:
            self._maybe_compact_locked()
        if head is None or until < head:
            self._cond.notify_all()

    def _when_locked(self, key: K) -> float:
        """Record one more failure for ``key`` and return its retry delay."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay = min(self._base_delay * math.ldexp(1.0, min(failures, _MAX_EXPONENT)), self._max_delay)
        if self._bucket is not None:
            delay = max(delay, self._bucket.reserve(self._clock()))
        return delay

    def _peek_locked(self) -> float | None:
        """The earliest live wake-up. Stale heap tops are dropped lazily on the way."""
        heap = self._heap
        while heap:
            when, seq, key = heap[0]
            live = self._waiting.get(key)
            if live is not None and live[1] == seq:
                return when
            heapq.heappop(heap)
        return None

    def _promote_due_locked(self) -> int:
        if not self._heap:
            return 0
        now = self._clock()
        heap = self._heap
        moved = 0
        while heap and heap[0][0] <= now:
            _, seq, key = heapq.heappop(heap)
            live = self._waiting.get(key)
            if live is None or live[1] != seq:
                continue  # stale: superseded by an earlier wake-up, an add, or a promotion
            del self._waiting[key]
            self._enqueue_locked(key)
            moved += 1
        self._maybe_compact_locked()  # fewer live entries may tip the stale ratio
        return moved

    def _maybe_compact_locked(self) -> None:
        """Rebuild the heap from live entries once stale ones outnumber them.

        Why: lazy deletion keeps each operation O(log n). Without this bound, a key whose
        delay is shortened over and over would leave unbounded garbage. Each rebuild
        costs O(live + stale), and that is less than 2 * stale, so it is amortised O(1)
        per operation that created a stale entry.
        """
        live = len(self._waiting)
        if len(self._heap) - live > live:
            self._heap = [(when, seq, key) for key, (when, seq) in self._waiting.items()]
            heapq.heapify(self._heap)

    def _take_locked(self) -> K | None:
        if self._shutdown:
            return None
        self._promote_due_locked()
        if not self._ready:
            return None
        key = self._ready.popleft()
        self._dirty.remove(key)
        self._processing.add(key)
        return key

    def _pass_baton_locked(self) -> None:
        # Defensive: a getter that leaves while keys are still ready wakes the next
        # one. That way a wake-up used by a getter that timed out is not lost.
        if self._ready:
            self._cond.notify()

    def _expired_locked(self, deadline: float | None) -> bool:
        return deadline is not None and self._clock() >= deadline

    def _wait_time_locked(self, deadline: float | None) -> float | None:
        """Seconds to sleep: until the earliest wake-up or the deadline, whichever is first."""
        now = self._clock()
        wait: float | None = None
        head = self._peek_locked()
        if head is not None:
            wait = head - now
        if deadline is not None:
            wait = deadline - now if wait is None else min(wait, deadline - now)
        if wait is None:
            return None
        return min(max(0.0, wait), threading.TIMEOUT_MAX)
