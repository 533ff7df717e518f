"""When an away session comes back: return-time distributions, learned online.

Between two requests a session is *away*: in a tool call, waiting on its person, announced active
by its client (UserActive: the person is typing), resuming (its tool call ended and its next
request is due), or silent (no hint at all). For each kind of
absence kvstore learns how long such absences last — per tool name, per tenant — and the agent
policy asks one question of it: this session has been away for `e` seconds; how likely is it back
within the next `h`? (`chance_back`; the hazard over a horizon, conditioned on the wait so far.)

Durations are multiplicative and heavy-tailed, so they are modelled in log space, as a kernel
density estimate with logistic kernels over the last HISTORY observations, their width following
the data's own spread (Silverman's rule, within bounds): exact announcements give a sharp
distribution, noisy ones a wide one. For a
tool call announced with a duration the observation is log(actual / announced): what is learned is
how far that tool's announcements run from reality, so noisy or habitually long guesses are
planned for, and an overrun is just the tail of the same distribution.

Each distribution leans on a broader one until it has evidence of its own — one tool's on every
tool of that kind, which leans on a wide prior — the parent counting as PRIOR_WEIGHT observations.
A never-seen tool so starts from what the others taught, with no threshold anywhere.
"""

from __future__ import annotations

import enum
import json
import logging
import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

HISTORY = 256  # observations kept per distribution
PRIOR_WEIGHT = 3.0  # the parent distribution counts as this many observations
# Logistic kernel scale in log space, between these: durations within ~4% (exact announcements)
# to ~20% (noisy ones); wider would blur the separate modes of people's think times, which the
# rule of thumb below (made for one bump) would otherwise smooth away.
MIN_KERNEL, MAX_KERNEL = 0.02, 0.1
REBUILD_DRIFT = 0.2  # re-tabulate when the ideal kernel width moved this much (relative)
MIN_OBSERVATION_S = 1e-3  # returns sooner than this are recorded as this
MAX_KEYS = 4096  # tool names / tenants learned per kind; later ones share the kind's distribution
# The log-space grid the CDFs are tabulated on: e^-12 s (6 us) .. e^18 s (2 years), 2.5% steps.
_GRID = np.linspace(-12.0, 18.0, 1201)
_STEP = float(_GRID[1] - _GRID[0])
_GRID_START = float(_GRID[0])
_LAST = len(_GRID) - 1
_TINY = 1e-12
KERNEL_REACH = 40.0  # kernel scales beyond which a logistic kernel is flat (e^-40)
# Observations are learned in batches: a burst of ends (many sessions' tool calls) costs one
# vectorised update per distribution instead of one each. A batch is folded in once this much
# clock time passed since the last, or when it reaches MAX_PENDING; so what planning reads lags
# what happened by at most FOLD_EVERY_S, nothing where observations are sparse (the first of a
# burst is folded in at once).
FOLD_EVERY_S = 0.05
MAX_PENDING = 64


class AwayKind(str, enum.Enum):
    TOOL = "tool"  # in a tool call announced with a duration: learns actual / announced
    TOOL_UNANNOUNCED = "tool_unannounced"  # in a tool call with no duration: learns durations
    USER = "user"  # waiting on its person
    USER_ACTIVE = "user_active"  # its person is active (typing, approving a step)
    SILENT = "silent"  # no hint since its last request
    RESUMING = "resuming"  # its tool call ended: the next request is about to come


# Before anything is learned: (median, logistic scale in log space). Wide on purpose: they only
# carry the first few absences of each kind, and a wrong narrow prior would cost more.
PRIORS: dict[AwayKind, tuple[float, float]] = {
    AwayKind.TOOL: (1.0, 0.4),  # announcements right on the median, within ~x2.5 most of the time
    AwayKind.TOOL_UNANNOUNCED: (10.0, 0.6),
    AwayKind.USER: (60.0, 1.0),
    AwayKind.USER_ACTIVE: (10.0, 0.6),
    AwayKind.SILENT: (30.0, 1.0),
    AwayKind.RESUMING: (1.0, 0.6),
}


# Kinds that follow a session's own rhythm (its person, its agent loop): learned per session too.
PER_SESSION = frozenset({AwayKind.USER, AwayKind.USER_ACTIVE, AwayKind.SILENT, AwayKind.RESUMING})
SESSION_HISTORY = 32  # observations kept per session and kind


@dataclass(frozen=True, slots=True)
class Away:
    """One absence: its kind, what it is learned under (tool name or tenant), when it began, the
    caller's announced duration for announced tool calls, and the session (for the kinds learned
    per session as well)."""

    kind: AwayKind
    key: str
    since: float
    announced_s: float | None = None
    session: str = ""

    def log_time(self, seconds: float) -> float:
        """Where `seconds` after `since` falls on this absence's distribution."""
        y = math.log(max(seconds, _TINY))
        if self.announced_s:
            y -= math.log(self.announced_s)
        return y


def _logistic_cdf(center: float, scale: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(np.clip(-(_GRID - center) / scale, -700.0, 700.0)))


def _add_kernels(acc: np.ndarray, centers: np.ndarray, scale: float, sign: float = 1.0) -> None:
    """acc += sign * the sum of _logistic_cdf(c, scale) over `centers`, computed only where some
    kernel is not yet flat (beyond KERNEL_REACH scales it is 0 or 1 to within e^-40)."""
    if len(centers) == 0:
        return
    n = len(_GRID)
    low, high = float(centers.min()), float(centers.max())
    lo = min(n, max(0, math.floor((low - KERNEL_REACH * scale - _GRID_START) / _STEP)))
    hi = min(n, max(0, math.floor((high + KERNEL_REACH * scale - _GRID_START) / _STEP) + 2))
    if lo < hi:
        with np.errstate(over="ignore"):  # far from a kernel: exp overflows, and 1 / inf is the 0 meant
            kernels = 1.0 / (1.0 + np.exp((centers[:, None] - _GRID[lo:hi]) / scale))
        acc[lo:hi] += sign * kernels.sum(axis=0)
    acc[hi:] += sign * len(centers)


def kernel_scale(n: int, total: float, squares: float) -> float:
    """Silverman's bandwidth for n samples with this sum and sum of squares, as a logistic scale."""
    if n < 2:
        return MIN_KERNEL
    variance = max(0.0, (squares - total * total / n) / (n - 1))
    bandwidth = 1.06 * math.sqrt(variance) * n**-0.2
    return min(MAX_KERNEL, max(MIN_KERNEL, bandwidth * math.sqrt(3.0) / math.pi))


class LogDistribution:
    """A CDF over log durations: observed kernels mixed with a parent (another LogDistribution or a
    fixed prior) that counts as PRIOR_WEIGHT observations."""

    def __init__(
        self, parent: LogDistribution | None = None, prior: tuple[float, float] | None = None
    ) -> None:
        self.parent = parent
        self._prior = None if prior is None else _logistic_cdf(math.log(prior[0]), prior[1])
        self.samples: deque[float] = deque(maxlen=HISTORY)
        self._total = self._squares = 0.0
        self.scale = MIN_KERNEL  # the kernel scale `_sum` was built with
        self._sum = np.zeros_like(_GRID)
        self.version = 0
        self._table: np.ndarray | None = None
        self._built_for: tuple[int, int] = (-1, -1)

    def record_many(self, ys: list[float]) -> None:
        """Learn observations (at most HISTORY at once): their kernels are added in one go."""
        ys = [min(max(y, float(_GRID[0])), float(_GRID[-1])) for y in ys]
        gone = []
        for y in ys:
            if len(self.samples) == self.samples.maxlen:
                gone.append(self.samples[0])  # the append below drops it
            self.samples.append(y)
        self._total += sum(ys) - sum(gone)
        self._squares += sum(y * y for y in ys) - sum(y * y for y in gone)
        self.version += 1
        ideal = kernel_scale(len(self.samples), self._total, self._squares)
        if abs(ideal / self.scale - 1.0) > REBUILD_DRIFT or self.version % 4096 == 0:
            self.scale = ideal  # (also bounds the drift of many additions and subtractions)
            self._sum = np.zeros_like(_GRID)
            _add_kernels(self._sum, np.array(self.samples), ideal)
        else:
            _add_kernels(self._sum, np.array(gone), self.scale, -1.0)
            _add_kernels(self._sum, np.array(ys), self.scale)

    def table(self) -> np.ndarray:
        """The CDF on the grid (rebuilt only when this or a parent learned something)."""
        parent_version = self.parent.version_deep() if self.parent is not None else 0
        if self._table is None or self._built_for != (self.version, parent_version):
            base = self.parent.table() if self.parent is not None else self._prior
            assert base is not None
            n = len(self.samples)
            self._table = (PRIOR_WEIGHT * base + self._sum) / (PRIOR_WEIGHT + n)
            self._built_for = (self.version, parent_version)
        return self._table

    def version_deep(self) -> int:
        return self.version + (self.parent.version_deep() if self.parent is not None else 0)

    def cdf(self, y: float) -> float:
        return _interpolate(self.table(), y)

    def quantile(self, u: float) -> float:
        """The log duration below which a fraction `u` of absences end."""
        return _inverse(self.table(), u)


class SessionDistribution:
    """A few observations of one session, mixed with its tenant's distribution (PRIOR_WEIGHT
    observations' worth). Its own kernels are tabulated once per observation; the mix is made at
    query time, so the tenant learning something costs the session nothing."""

    def __init__(self, parent: LogDistribution) -> None:
        self.parent = parent
        self.samples: deque[float] = deque(maxlen=SESSION_HISTORY)
        self.scale = MIN_KERNEL
        self._own = np.zeros_like(_GRID)

    def record_many(self, ys: list[float]) -> None:
        self.samples.extend(ys)
        n = len(self.samples)
        self.scale = kernel_scale(n, sum(self.samples), sum(x * x for x in self.samples))
        self._own = np.zeros_like(_GRID)
        _add_kernels(self._own, np.array(self.samples), self.scale)

    def cdf(self, y: float) -> float:
        return (PRIOR_WEIGHT * self.parent.cdf(y) + _interpolate(self._own, y)) / (
            PRIOR_WEIGHT + len(self.samples)
        )

    def quantile(self, u: float) -> float:
        return _inverse(
            (PRIOR_WEIGHT * self.parent.table() + self._own) / (PRIOR_WEIGHT + len(self.samples)), u
        )


def _interpolate(table: np.ndarray, y: float) -> float:
    pos = (y - _GRID_START) / _STEP
    if pos <= 0:
        return float(table[0]) * math.exp(min(0.0, y - _GRID_START))
    if pos >= _LAST:
        return float(table[-1])
    i = int(pos)
    frac = pos - i
    return float(table[i]) * (1.0 - frac) + float(table[i + 1]) * frac


def _inverse(table: np.ndarray, u: float) -> float:
    i = int(np.searchsorted(table, u))
    if i <= 0:
        return _GRID_START
    if i >= len(table):
        return float(_GRID[-1])
    lo, hi = float(table[i - 1]), float(table[i])
    frac = (u - lo) / (hi - lo) if hi > lo else 0.0
    return float(_GRID[i - 1]) + frac * _STEP


class ReturnTimes:
    """Learned return-time distributions for every kind of absence, kept as JSON in `path` so that
    what was learned survives a restart (saved by the caller's schedule, see `save`)."""

    def __init__(self, path: Path | None = None, default_tool_s: float = 10.0) -> None:
        self.path = path
        self.priors = {
            **PRIORS,
            AwayKind.TOOL_UNANNOUNCED: (default_tool_s, PRIORS[AwayKind.TOOL_UNANNOUNCED][1]),
        }
        self.pooled = {kind: LogDistribution(prior=self.priors[kind]) for kind in AwayKind}
        self.specific: dict[AwayKind, dict[str, LogDistribution]] = {kind: {} for kind in AwayKind}
        self.per_session: dict[tuple[AwayKind, str], SessionDistribution] = {}
        self.dirty = False
        self._pending: list[tuple[Away, float]] = []  # observations not folded in yet
        self._folded_at = -math.inf
        if path is not None and path.exists():
            self._load(path)

    def distribution(
        self, kind: AwayKind, key: str, session: str = ""
    ) -> LogDistribution | SessionDistribution:
        """The narrowest distribution with evidence: the session's, its tenant's or tool's, the kind's."""
        if session:
            own = self.per_session.get((kind, session))
            if own is not None:
                return own
        return self.specific[kind].get(key) or self.pooled[kind]

    def record(self, away: Away, seconds: float) -> None:
        """An absence ended after `seconds` (an instant return counts as MIN_OBSERVATION_S)."""
        if seconds < 0 or not math.isfinite(seconds):
            return
        self._pending.append((away, seconds))
        self.dirty = True
        self._fold_due(away.since + seconds)

    def _fold_due(self, now: float) -> None:
        # A clock behind the last fold is another timeline (a test, a replay): fold, never lag.
        lag = now - self._folded_at
        if self._pending and (lag >= FOLD_EVERY_S or lag < 0 or len(self._pending) >= MAX_PENDING):
            self._folded_at = now
            self.fold()

    def fold(self) -> None:
        """Learn the pending observations, each distribution in one update."""
        batches: dict[int, tuple[LogDistribution | SessionDistribution, list[float]]] = {}

        def add(dist: LogDistribution | SessionDistribution, y: float) -> None:
            batches.setdefault(id(dist), (dist, []))[1].append(y)

        for away, seconds in self._pending:
            y = away.log_time(max(seconds, MIN_OBSERVATION_S))
            add(self.pooled[away.kind], y)
            specific = self.specific[away.kind]
            dist = specific.get(away.key)
            if dist is None and away.key and len(specific) < MAX_KEYS:
                dist = specific[away.key] = LogDistribution(parent=self.pooled[away.kind])
            if dist is not None:
                add(dist, y)
            if away.session and away.kind in PER_SESSION:
                own = self.per_session.get((away.kind, away.session))
                if own is None:
                    own = self.per_session[(away.kind, away.session)] = SessionDistribution(
                        dist or self.pooled[away.kind]
                    )
                add(own, y)
        self._pending.clear()
        for dist, ys in batches.values():
            dist.record_many(ys)

    def forget(self, session: str) -> None:
        """The session ended: drop what was learned of it alone."""
        self.fold()  # its pending observations teach its tool and tenant all the same
        for kind in PER_SESSION:
            self.per_session.pop((kind, session), None)

    def chance_back(self, away: Away, now: float, horizon_s: float) -> float:
        """P(the session is back within `horizon_s` | away since `away.since`, not back by `now`)."""
        self._fold_due(now)
        dist = self.distribution(away.kind, away.key, away.session)
        elapsed = max(0.0, now - away.since)
        y0, y1 = away.log_time(elapsed), away.log_time(elapsed + horizon_s)
        before = dist.cdf(y0) if elapsed > 0 else 0.0
        survival = 1.0 - before
        if survival < 1e-9:  # beyond everything seen: an exponential tail in log space
            return 1.0 - math.exp(-(y1 - y0) / max(MIN_KERNEL, getattr(dist, "scale", MIN_KERNEL)))
        return min(1.0, max(0.0, (dist.cdf(y1) - before) / survival))

    def time_back(self, away: Away, now: float, fraction: float) -> float:
        """The time by which `fraction` of the remaining probability of coming back is used up,
        given the session is not back by `now` (a fraction of 0.5: the conditional median)."""
        self._fold_due(now)
        dist = self.distribution(away.kind, away.key, away.session)
        elapsed = max(0.0, now - away.since)
        before = dist.cdf(away.log_time(elapsed)) if elapsed > 0 else 0.0
        u = before + fraction * (1.0 - before)
        if u >= 1.0 - 1e-9:
            return math.inf
        seconds = math.exp(dist.quantile(u)) * (away.announced_s or 1.0)
        return away.since + max(seconds, elapsed)

    def median_s(self, kind: AwayKind, key: str) -> float:
        self.fold()  # (no clock here; and it is asked rarely: a tool call with no duration)
        return math.exp(self.distribution(kind, key).quantile(0.5))

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> dict[str, dict[str, list[float]]]:
        self.fold()
        return {
            kind.value: {key: list(dist.samples) for key, dist in self.specific[kind].items()}
            | {"*": list(self.pooled[kind].samples)}
            for kind in AwayKind
        }

    def take_snapshot(self) -> dict[str, dict[str, list[float]]] | None:
        """What was learned since the last snapshot was taken, to write (None: nothing new)."""
        if self.path is None or not self.dirty:
            return None
        self.dirty = False
        return self.snapshot()

    def write(self, snapshot: dict[str, dict[str, list[float]]]) -> None:
        """Write a snapshot (tmp + rename); needs no lock."""
        assert self.path is not None
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(snapshot))
        tmp.replace(self.path)

    def save(self) -> None:
        """Write what was learned, if anything was since the last save (at shutdown)."""
        snapshot = self.take_snapshot()
        if snapshot is not None:
            self.write(snapshot)

    def _load(self, path: Path) -> None:
        try:
            saved = json.loads(path.read_text())
            for kind in AwayKind:
                for key, values in saved.get(kind.value, {}).items():
                    if key == "*":
                        dist = self.pooled[kind]
                    elif len(self.specific[kind]) < MAX_KEYS:
                        dist = self.specific[kind].setdefault(key, LogDistribution(parent=self.pooled[kind]))
                    else:
                        continue
                    dist.record_many([float(y) for y in values[-HISTORY:]])
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable return-time table %s: %s", path, exc)
