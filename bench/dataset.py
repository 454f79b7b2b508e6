"""The benchmark's dataset, generated deterministically in memory as COPY text rows.

Shape (``Params``): ``users`` users whose activity follows a Zipf-like law; ``conversations`` conversations,
mostly direct pairs and ``groups`` groups of 3-50 members; ``messages`` messages, of which ``deep_messages`` are
in one direct conversation (the deep-paging target) and the rest are spread over the other conversations with a
heavy-tailed law (many quiet conversations, a few busy ones, some empty); one heavy user in
``heavy_conversations`` conversations. Everybody has a read position: most are caught up, some are behind.

Every row satisfies the schema's invariants (see ``sql/0001_initial.sql``): positions are dense ``1..last_seq``,
``sent_at`` grows with ``seq``, ``conversation.last_activity_at`` is the latest message's ``sent_at`` (or the
creation time), a participant's watermark is never below their own latest message nor above ``last_seq``,
direct pairs are ordered and unique, and each conversation row carries its latest message's id, sender and
content (up to 400 characters, else NULL) and its number of members (``sql/0005_constant_cost_send.sql``) and
its two lowest member ids, from which the list shows ``participantId`` (a direct pair's other member, a group's
first other member by id; ``sql/0007_groups.sql``, where a group's creator is its owner).

Version 5 draws the very same random sequence as version 4 and only lays the rows out as 0005 and 0007 do, so a v4
dataset that migration 0005 upgraded is the v5 dataset (``bench.seed.MIGRATED``). Version 6 adds the change
numbers of 0008 (each message's change_seq is its seq, each conversation's last_change_seq its last_seq): what
0008's backfill makes of a v5 dataset. Version 7 adds 0010's copies of each direct conversation's list row on its
members' rows, as 0010's backfill makes them.
"""

from __future__ import annotations

import random
from bisect import bisect_left
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import accumulate

HEAVY_USER = "user-00000"
DEEP_PAIR = ("user-00001", "user-00002")
_WORDS = (  # noqa: SIM905 - a sentence reads better than a list of fifty words
    "ok sure thanks lunch meeting tomorrow today deploy build failing fixed merged review call later "
    "coffee ship it looks good to me can you check the numbers again please great idea sounds fine see you"
).split()


@dataclass(frozen=True)
class Params:
    """What the dataset holds; a change of any field means a re-seed."""

    version: int = 7
    seed: int = 4
    users: int = 10_000
    conversations: int = 50_000
    groups: int = 5_000
    messages: int = 1_000_000
    deep_messages: int = 200_000
    heavy_conversations: int = 500
    heavy_groups: int = 60
    days: int = 365

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class Conversation:
    conversation_id: str
    is_group: bool
    members: list[str]
    created_at: datetime
    title: str = ""
    message_count: int = 0


@dataclass
class Dataset:
    """COPY text (tab-separated, ``\\N`` for NULL) for the three tables, plus the ids the benchmark needs."""

    conversation_rows: list[str] = field(default_factory=list)
    participant_rows: list[str] = field(default_factory=list)
    message_chunks: list[str] = field(default_factory=list)
    message_count: int = 0
    deep_conversation_id: str = ""
    typical_user: str = ""


_UUID_MASK = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_UUID_V4 = (0x4 << 76) | (0x2 << 62)


def _user(index: int) -> str:
    return f"user-{index:05d}"


def _ts(moment: datetime) -> str:
    return moment.isoformat()


def _uuid(rng: random.Random) -> str:
    """A random version-4 UUID from ``rng`` (deterministic, and cheaper than ``uuid.UUID``)."""
    h = f"{rng.getrandbits(128) & _UUID_MASK | _UUID_V4:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class _WeightedUsers:
    """Draws users (never the heavy one) with Zipf-like weights: a few are in many conversations."""

    def __init__(self, rng: random.Random, count: int) -> None:
        self._rng = rng
        ranks = list(range(1, count))
        rng.shuffle(ranks)
        self._ids = [_user(i) for i in range(1, count)]
        self._cumulative = list(accumulate(1.0 / (rank + 50) ** 0.7 for rank in ranks))

    def draw(self) -> str:
        point = self._rng.random() * self._cumulative[-1]
        return self._ids[bisect_left(self._cumulative, point)]

    def distinct(self, count: int, exclude: set[str]) -> list[str]:
        chosen: list[str] = []
        seen = set(exclude)
        while len(chosen) < count:
            user = self.draw()
            if user not in seen:
                seen.add(user)
                chosen.append(user)
        return chosen


def _conversations(params: Params, rng: random.Random, start: datetime, span_s: float) -> list[Conversation]:
    users = _WeightedUsers(rng, params.users)
    made: list[Conversation] = []
    pairs: set[tuple[str, str]] = set()

    def created() -> datetime:
        return start + timedelta(seconds=rng.random() * span_s * 0.5)

    def direct(a: str, b: str) -> None:
        pair = (a, b) if a < b else (b, a)
        pairs.add(pair)
        made.append(Conversation(_uuid(rng), False, list(pair), created()))

    def group(members: list[str]) -> None:
        title = f"{rng.choice(_WORDS)} {rng.choice(_WORDS)} team"
        made.append(Conversation(_uuid(rng), True, members, created(), title))

    def group_size() -> int:
        return min(50, 2 + int(rng.paretovariate(1.2)))

    direct(*DEEP_PAIR)
    heavy_partners = users.distinct(params.heavy_conversations - params.heavy_groups, {HEAVY_USER})
    for partner in heavy_partners:
        direct(HEAVY_USER, partner)
    for _ in range(params.heavy_groups):
        group([HEAVY_USER, *users.distinct(group_size() - 1, {HEAVY_USER})])
    # Everyone is in at least one conversation: the first direct pairs give each quiet user a partner.
    quiet = [_user(i) for i in range(3, params.users)]
    while len(made) < params.conversations - (params.groups - params.heavy_groups):
        a, b = (quiet[-1] if quiet else users.draw()), users.draw()
        pair = (a, b) if a < b else (b, a)
        if a != b and pair not in pairs:
            direct(a, b)
            if quiet and quiet[-1] == a:
                quiet.pop()
    while len(made) < params.conversations:
        group(users.distinct(group_size(), {HEAVY_USER}))
    return made


def _content(rng: random.Random) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 14)))


def generate(params: Params, now: datetime | None = None) -> Dataset:
    """The whole dataset; deterministic for given ``params`` (timestamps are relative to ``now``)."""
    rng = random.Random(params.seed)
    end = (now or datetime.now(UTC)) - timedelta(minutes=5)
    span_s = params.days * 86_400.0
    start = end - timedelta(seconds=span_s)
    conversations = _conversations(params, rng, start, span_s)

    # Activity is heavy-tailed: a Pareto weight per conversation, a fifth of them silent.
    deep = conversations[0]
    deep.message_count = params.deep_messages
    weights = [0.0 if rng.random() < 0.2 else rng.paretovariate(1.1) for _ in conversations[1:]]
    drawn = Counter(rng.choices(range(1, len(conversations)), weights=weights, k=params.messages - deep.message_count))
    for index, count in drawn.items():
        conversations[index].message_count = count

    contents = [_content(rng) for _ in range(4096)]
    data = Dataset(deep_conversation_id=deep.conversation_id)
    memberships: Counter[str] = Counter()
    for conv in conversations:
        lines: list[str] = []
        own_last: dict[str, int] = {}
        n = conv.message_count
        window = (end - conv.created_at).total_seconds()
        offsets = sorted(rng.random() for _ in range(n))
        last_at = conv.created_at
        sent_times: list[datetime] = []
        # The latest message (id, sender, content), copied onto the conversation row (sql/0005).
        latest = (r"\N", r"\N", r"\N")
        for seq in range(1, n + 1):
            sender = conv.members[rng.randrange(len(conv.members))]
            own_last[sender] = seq
            last_at = conv.created_at + timedelta(seconds=1 + offsets[seq - 1] * (window - 1))
            sent_times.append(last_at)
            latest = (_uuid(rng), sender, contents[rng.randrange(4096)])
            lines.append(
                f"{latest[0]}\t{conv.conversation_id}\t{seq}\t{seq}\t{sender}\tseed-{seq}\t{latest[2]}\t{_ts(last_at)}\n"
            )
        data.message_chunks.append("".join(lines))
        data.message_count += n
        direct_low, direct_high = (r"\N", r"\N") if conv.is_group else (conv.members[0], conv.members[1])
        ordered = sorted(conv.members)
        latest_content = latest[2] if len(latest[2]) <= 400 else r"\N"  # longer: the list reads message_table
        data.conversation_rows.append(
            f"{conv.conversation_id}\t{conv.title}\t{'t' if conv.is_group else 'f'}\t{conv.members[0]}\t"
            f"{_ts(conv.created_at)}\t{_ts(last_at)}\t{n}\t{direct_low}\t{direct_high}\t"
            f"{latest[0]}\t{latest[1]}\t{latest_content}\t{len(conv.members)}\t{ordered[0]}\t{ordered[1]}\t{n}\n"
        )
        for member in conv.members:
            memberships[member] += 1
            # Most readers are caught up; the rest are a few (sometimes many) messages behind.
            behind = 0 if rng.random() < 0.7 else min(n, int(rng.paretovariate(0.8)))
            read_seq = max(n - behind, own_last.get(member, 0))
            read_at = _ts(sent_times[read_seq - 1]) if read_seq > 0 else r"\N"
            role = "owner" if conv.is_group and member == conv.members[0] else "member"
            data.participant_rows.append(
                f"{conv.conversation_id}\t{member}\t{_ts(conv.created_at)}\t{read_seq}\t{read_at}\t{role}\n"
            )
    counts = sorted(count for user, count in memberships.items() if user != HEAVY_USER)
    median = counts[len(counts) // 2]
    data.typical_user = min(
        (user for user, count in memberships.items() if count == median and user not in DEEP_PAIR),
    )
    return data
