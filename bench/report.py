"""``bench/results.json`` (exactly the issue's keys), the printed table with ratios to the baseline, the chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.measure_groups import ONLINE_EVERY
from bench.seed import DatasetInfo
from bench.timing import Stats
from bench.wal import Wal

SKIPPED = "skipped: local server unavailable"


def _r(value: float) -> float:
    return round(value, 3)


def results(info: DatasetInfo, stats: dict[str, Any], per_push_ms: float) -> dict[str, Any]:
    """The results document; sections whose phase did not run hold ``None``."""

    def p50(name: str) -> float | None:
        found: Stats | None = stats.get(name)
        return _r(found.p50_ms) if found else None

    def p99(name: str) -> float | None:
        found: Stats | None = stats.get(name)
        return _r(found.p99_ms) if found else None

    groups: dict[str, Any] = stats.get("groups") or {}

    def group_p50(name: str) -> float | None:
        found: Stats | None = groups.get(name)
        return _r(found.p50_ms) if found else None

    def wal(name: str) -> float | None:
        # Without full-page images, which follow the checkpoint schedule (bench/wal.py); all runs if each had one.
        found: Wal | None = groups.get(name)
        if found is None:
            return None
        return _r(found.records_bytes if found.records_bytes is not None else found.bytes)

    imports = stats.get("import") or {}
    e2e = stats.get("e2e")
    members: dict[str, Any] = stats.get("members") or {}
    lifecycle: dict[str, Any] = stats.get("lifecycle") or {}
    signals: dict[str, Any] = stats.get("signals") or {}
    queued: dict[str, Any] = stats.get("queued") or {}
    cluster: dict[str, Any] = stats.get("cluster") or {}
    abuse: dict[str, Any] = stats.get("abuse") or {}

    def of(section: dict[str, Any], name: str, q: int = 50) -> float | None:
        found: Stats | None = section.get(name)
        if not found:
            return None
        return _r(found.p50_ms if q == 50 else found.p99_ms)

    def queued_run(outcome: dict[str, Any] | None) -> dict[str, Any] | None:
        if not outcome:
            return None
        return {key: _r(value) if isinstance(value, float) else value for key, value in outcome.items()}

    budget = queued.get("budget per s")
    return {
        "dataset": {"users": info.users, "conversations": info.conversations, "messages": info.messages},
        "list_conversations": {
            "p50_ms": p50("list heavy"),
            "p99_ms": p99("list heavy"),
            "typical_p50_ms": p50("list typical"),
            "baseline_p50_ms": p50("baseline list heavy"),
        },
        "messages_page": {
            "newest_p50_ms": p50("page newest"),
            "deep_cursor_p50_ms": p50("page deep cursor"),
            "deep_offset_p50_ms": p50("page deep offset"),
            "baseline_deep_offset_p50_ms": p50("baseline page deep offset"),
        },
        "send_message": {
            "p50_ms": p50("send"),
            "p99_ms": p99("send"),
            "baseline_p50_ms": p50("baseline send"),
            "sql_p50_ms": group_p50("send sql direct"),
            "group_1k_sql_p50_ms": group_p50("send sql 1k"),
            "group_10k_sql_p50_ms": group_p50("send sql 10k"),
            "group_1k_p50_ms": group_p50("send 1k"),
            "group_10k_p50_ms": group_p50("send 10k"),
            "group_10k_queued_p50_ms": group_p50("send 10k queued"),
            "direct_beside_queued_p50_ms": group_p50("send direct beside queued"),
            "group_1k_pushes": groups.get("pushes 1k"),
            "group_10k_pushes": groups.get("pushes 10k"),
            "group_online_fraction": 1 / ONLINE_EVERY if groups else None,
            "wal_bytes_direct": wal("wal direct"),
            "wal_bytes_group_100": wal("wal 100"),
            "wal_bytes_group_10k": wal("wal 10k"),
        },
        "create_group": {"members_1k_ms": group_p50("create 1k"), "members_10k_ms": group_p50("create 10k")},
        "fanout_1000": {
            "ms": p50("fanout"),
            "per_push_latency_ms": per_push_ms if "fanout" in stats else None,
        },
        "read_messages": {
            "p50_ms_1_unread": p50("read 1"),
            "p50_ms_10k_unread": p50("read 10000"),
            "baseline_p50_ms_10k_unread": p50("baseline read 10000"),
            "group_10k_p50_ms": group_p50("read 10k"),
            "group_10k_pushes": groups.get("read pushes 10k"),
        },
        "cold_import": {
            "rest_ms": _r(imports["rest_ms"]) if imports else None,
            "websocket_ms": _r(imports["websocket_ms"]) if imports else None,
            "boto3_ms": _r(imports["boto3_ms"]) if imports else None,
        },
        "e2e_local": e2e if e2e is not None else None,
        "members": {
            "add_100_ms": of(members, "add 100"),
            "add_100_p99_ms": of(members, "add 100", 99),
            "remove_ms": of(members, "remove"),
            "add_100_queued_ms": of(members, "add 100 queued"),
            "remove_queued_ms": of(members, "remove queued"),
            "remove_p99_ms": of(members, "remove", 99),
            "group_members": 10_000 if members else None,
        },
        "conversation": {
            "get_10_ms": of(members, "get 10"),
            "get_10k_ms": of(members, "get 10k"),
            "get_10k_members_in_body": members.get("get 10k members shown"),
        },
        "edit_message": {
            "p50_ms": of(lifecycle, "edit"),
            "p99_ms": of(lifecycle, "edit", 99),
            "send_p50_ms_same_run": of(lifecycle, "send"),
        },
        "delete_message": {"p50_ms": of(lifecycle, "delete"), "p99_ms": of(lifecycle, "delete", 99)},
        "react": {"p50_ms": of(lifecycle, "react"), "p99_ms": of(lifecycle, "react", 99)},
        "changes_page": {
            "newest_p50_ms": of(lifecycle, "changes newest"),
            "deep_p50_ms": of(lifecycle, "changes deep"),
            "deep_changes": lifecycle.get("changes depth"),
            "conversation_changes": lifecycle.get("changes conversation length"),
        },
        "typing": {
            "p50_ms": of(signals, "typing"),
            "p99_ms": of(signals, "typing", 99),
            "sql_statements": signals.get("typing_sql_statements"),
            # bench/measure_signals.py counts around the timed frames and their 20 warm-up frames.
            "frames_counted": len(signals["typing"].samples) + 20 if signals.get("typing") else None,
        },
        "presence": {
            "p50_ms": of(signals, "presence"),
            "p99_ms": of(signals, "presence", 99),
            "users": 100 if signals else None,
        },
        "fanout_queued": {
            "connections_10k": queued_run(_median_run(queued.get("runs"))),
            "connections_10k_5_pollers": queued_run(_median_run(queued.get("runs 5 pollers"))),
            "connections_10k_one_shard_failing": queued_run(queued.get("failing")),
            "budget_per_s": budget,
            "budget_burst": queued.get("budget burst"),
            "shard_size": queued.get("shard size"),
            "per_push_latency_ms": 20.0 if queued else None,
            # 1.25 x (10,000 / budget + one queue hop), the hop being the runs' median time to the first queued push.
            "target_ms": _r(1.25 * (10_000 / budget * 1000 + _median_hop(queued["runs"])))
            if budget and queued.get("runs")
            else None,
        },
        "abuse": {
            "victim_alone_p50_ms": of(abuse, "victim_quiet"),
            "victim_alone_p99_ms": of(abuse, "victim_quiet", 99),
            "victim_during_flood_p50_ms": of(abuse, "victim_flood"),
            "victim_during_flood_p99_ms": of(abuse, "victim_flood", 99),
            "flood_frames": abuse.get("flood_sends"),
            "flood_stored": abuse.get("flood_stored"),
            "flood_seconds": abuse.get("flood_seconds"),
            "connects_tried": abuse.get("connects"),
            "connects_refused": abuse.get("connects_refused"),
        }
        if abuse
        else None,
        "registry_cluster": {
            name.replace(" ", "_"): {
                "cluster_p50_ms": of(cluster, f"{name} cluster"),
                "standalone_p50_ms": of(cluster, f"{name} standalone"),
            }
            for name in ("register", "touch", "touch send", "connections_for 100", "unregister")
        }
        if cluster
        else None,
    }


def _median_run(runs: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The run with the median time to the last push, with every run's time beside it."""
    if not runs:
        return None
    timed = sorted(runs, key=lambda run: float(run["ms"] or 0))
    return {
        **timed[len(timed) // 2],
        "runs_ms": [run["ms"] for run in runs],
        "runs_first_queued_push_ms": [run["first_queued_push_ms"] for run in runs],
    }


def _median_hop(runs: list[dict[str, Any]]) -> float:
    return float(sorted(float(run["first_queued_push_ms"] or 0) for run in runs)[len(runs) // 2])


_SECTION_PHASE = {
    "list_conversations": "rest",
    "messages_page": "rest",
    "send_message": "ws",
    "create_group": "groups",
    "read_messages": "ws",
    "fanout_1000": "fanout",
    "cold_import": "import",
    "e2e_local": "e2e",
    "members": "members",
    "conversation": "members",
    "edit_message": "lifecycle",
    "delete_message": "lifecycle",
    "react": "lifecycle",
    "changes_page": "lifecycle",
    "typing": "signals",
    "presence": "signals",
    "fanout_queued": "queued",
    "registry_cluster": "cluster",
    "abuse": "abuse",
}


# Keys of a section that another phase measures (the large-group figures sit beside the direct ones).
_GROUP_KEYS = {
    "send_message": (
        "sql_p50_ms",
        "group_1k_sql_p50_ms",
        "group_10k_sql_p50_ms",
        "group_1k_p50_ms",
        "group_10k_p50_ms",
        "group_10k_queued_p50_ms",
        "direct_beside_queued_p50_ms",
        "group_1k_pushes",
        "group_10k_pushes",
        "group_online_fraction",
        "wal_bytes_direct",
        "wal_bytes_group_100",
        "wal_bytes_group_10k",
    ),
    "read_messages": ("group_10k_p50_ms", "group_10k_pushes"),
}


def merge(previous: dict[str, Any] | None, current: dict[str, Any], phases: set[str]) -> dict[str, Any]:
    """Keep the previous run's figures for phases this run skipped (``--only``), key by key where a section holds
    figures of two phases."""
    if not previous:
        return current
    merged = dict(current)
    for section, phase in _SECTION_PHASE.items():
        old, new = previous.get(section), current.get(section)
        group_keys = _GROUP_KEYS.get(section, ())
        if phase not in phases and old is not None:
            if isinstance(old, dict) and isinstance(new, dict) and "groups" in phases:
                merged[section] = {**old, **{key: new[key] for key in group_keys if key in new}}
            else:
                merged[section] = old
        elif "groups" not in phases and isinstance(old, dict) and isinstance(new, dict):
            merged[section] = {**new, **{key: old[key] for key in group_keys if key in old}}
    return merged


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _times(value: float | None, reference: float | None) -> str:
    """`` (is 1.2x)`` when both figures exist."""
    return f" (is {value / reference:,.2f}x)" if value and reference else ""


def _online(send: dict[str, Any], size: str) -> str:
    pushes = send.get(f"group_{size}_pushes")
    return f"{pushes:,} connections online" if pushes is not None else "10% online"


def rows(results: dict[str, Any]) -> list[tuple[str, Any, Any, str]]:
    """(operation, ours, baseline, target) for the table and the chart."""
    lc, mp, sm = results["list_conversations"], results["messages_page"], results["send_message"]
    fo, rm, ci = results["fanout_1000"], results["read_messages"], results["cold_import"]
    cg = results.get("create_group") or {}
    return [
        ("list conversations, heavy user (500), p50", lc["p50_ms"], lc["baseline_p50_ms"], "≤ 3 ms, ≥ 5x baseline"),
        ("list conversations, heavy user, p99", lc["p99_ms"], None, ""),
        ("list conversations, typical user, p50", lc["typical_p50_ms"], None, ""),
        ("page of 50, newest, p50", mp["newest_p50_ms"], None, "≤ 3 ms"),
        ("page of 50, 150k deep by before= cursor, p50", mp["deep_cursor_p50_ms"], None, "≤ 1.5x newest"),
        ("page of 50, 150k deep by offset, p50", mp["deep_offset_p50_ms"], mp["baseline_deep_offset_p50_ms"], "≤ 3 ms"),
        ("send-message, direct, p50", sm["p50_ms"], sm["baseline_p50_ms"], "≤ 5 ms"),
        ("send-message, direct, p99", sm["p99_ms"], None, ""),
        ("send SQL alone, direct, p50", sm.get("sql_p50_ms"), None, ""),
        ("send SQL alone, 1,000 members, p50", sm.get("group_1k_sql_p50_ms"), None, ""),
        (
            "send SQL alone, 10,000 members, p50",
            sm.get("group_10k_sql_p50_ms"),
            None,
            f"≤ 1.5x direct{_times(sm.get('group_10k_sql_p50_ms'), sm.get('sql_p50_ms'))}",
        ),
        (f"send-message, 1,000 members ({_online(sm, '1k')}), p50", sm.get("group_1k_p50_ms"), None, ""),
        (
            f"send-message, 10,000 members ({_online(sm, '10k')}), p50",
            sm.get("group_10k_p50_ms"),
            None,
            f"vs direct{_times(sm.get('group_10k_p50_ms'), sm.get('p50_ms'))}",
        ),
        (
            "send-message, 10,000 members, with the fan-out queue (queued whole), p50",
            sm.get("group_10k_queued_p50_ms"),
            None,
            "≤ 1.5x direct, same rounds"
            f"{_times(sm.get('group_10k_queued_p50_ms'), sm.get('direct_beside_queued_p50_ms'))}",
        ),
        ("  direct send in the same rounds, p50", sm.get("direct_beside_queued_p50_ms"), None, ""),
        ("WAL bytes per send without full-page images, direct", sm.get("wal_bytes_direct"), None, ""),
        ("WAL bytes per send without full-page images, 100 members", sm.get("wal_bytes_group_100"), None, ""),
        (
            "WAL bytes per send without full-page images, 10,000 members",
            sm.get("wal_bytes_group_10k"),
            None,
            # A direct send writes both members' list rows too (sql/0010): the size rule is between groups.
            f"≈ 100 members{_times(sm.get('wal_bytes_group_10k'), sm.get('wal_bytes_group_100'))}",
        ),
        ("create group, 1,000 members", cg.get("members_1k_ms"), None, ""),
        ("create group, 10,000 members", cg.get("members_10k_ms"), None, "≤ 1,000 ms"),
        ("fan-out to 1,000 connections at 20 ms each", fo["ms"], None, "≤ 600 ms"),
        ("read-messages, 1 unread, p50", rm["p50_ms_1_unread"], None, ""),
        (
            "read-messages, 10,000 unread, p50",
            rm["p50_ms_10k_unread"],
            rm["baseline_p50_ms_10k_unread"],
            "≤ 1.5x 1 unread",
        ),
        (
            f"read-messages, 10,000 members ({_fmt(rm.get('group_10k_pushes'))} pushes), p50",
            rm.get("group_10k_p50_ms"),
            None,
            "",
        ),
        *_later_rows(results),
        ("cold import, REST Lambda", ci["rest_ms"], None, "≤ 150 ms"),
        ("cold import, WebSocket Lambda", ci["websocket_ms"], None, ""),
        ("cold import, boto3 alone (scale)", ci["boto3_ms"], None, ""),
    ]


def _later_rows(results: dict[str, Any]) -> list[tuple[str, Any, Any, str]]:
    """Rows of issues 12 to 15 (groups, message lifecycle, signals, queued fan-out); a ratio where the issue names
    a comparison. The reference goes in the baseline column only where it is a different design."""
    mb, cv = results.get("members") or {}, results.get("conversation") or {}
    em, dm, rc = results.get("edit_message") or {}, results.get("delete_message") or {}, results.get("react") or {}
    cp, ty, pr = results.get("changes_page") or {}, results.get("typing") or {}, results.get("presence") or {}
    send = em.get("send_p50_ms_same_run")
    fq = results.get("fanout_queued") or {}
    full, failing = fq.get("connections_10k") or {}, fq.get("connections_10k_one_shard_failing") or {}
    five = fq.get("connections_10k_5_pollers") or {}
    rows: list[tuple[str, Any, Any, str]] = [
        ("add 100 members to a 10,000-member group", mb.get("add_100_ms"), None, "O(changed members)"),
        ("remove one member of a 10,000-member group", mb.get("remove_ms"), None, "O(changed members)"),
        ("add 100 members to it, with the fan-out queue", mb.get("add_100_queued_ms"), None, "queued whole"),
        ("remove one member of it, with the fan-out queue", mb.get("remove_queued_ms"), None, "queued whole"),
        ("GET /conversations/{id}, 10 members, p50", cv.get("get_10_ms"), None, ""),
        (
            f"GET /conversations/{{id}}, 10,000 members ({_fmt(cv.get('get_10k_members_in_body'))} in body), p50",
            cv.get("get_10k_ms"),
            None,
            f"vs 10{_times(cv.get('get_10k_ms'), cv.get('get_10_ms'))}",
        ),
        ("send-message, direct, same run as the three below, p50", send, None, ""),
        ("edit-message, p50", em.get("p50_ms"), None, f"vs send{_times(em.get('p50_ms'), send)}"),
        ("delete-message, p50", dm.get("p50_ms"), None, f"vs send{_times(dm.get('p50_ms'), send)}"),
        ("react, p50", rc.get("p50_ms"), None, f"vs send{_times(rc.get('p50_ms'), send)}"),
        ("change feed, newest page of 50, p50", cp.get("newest_p50_ms"), None, ""),
        (
            f"change feed, {_fmt(cp.get('deep_changes'))} changes deep, page of 50, p50",
            cp.get("deep_p50_ms"),
            None,
            f"≤ 1.5x newest{_times(cp.get('deep_p50_ms'), cp.get('newest_p50_ms'))}",
        ),
        ("typing frame (pushed to 9), p50", ty.get("p50_ms"), None, ""),
        (f"SQL statements in {_fmt(ty.get('frames_counted'))} typing frames", ty.get("sql_statements"), None, "0"),
        ("GET /presence, 100 users (half visible, a quarter online), p50", pr.get("p50_ms"), None, ""),
        (
            f"queued fan-out to 10,000 connections at 20 ms, budget {_fmt(fq.get('budget_per_s'))}/s:"
            " ms to the last push",
            full.get("ms"),
            None,
            f"≤ {_fmt(fq.get('target_ms'))} ms (1.25x (10,000/budget + queue hop))",
        ),
        (
            "  delivered / duplicates / lost",
            f"{_fmt(full.get('delivered'))}/{_fmt(full.get('duplicates'))}/{_fmt(full.get('lost'))}" if full else None,
            None,
            "10,000/0/0",
        ),
        (
            "  the same, 5 pollers, each invoking its own worker process",
            five.get("ms"),
            None,
            f"≤ {_fmt(fq.get('target_ms'))} ms",
        ),
        ("  one shard failing midway: ms from the worker's start", failing.get("ms"), None, ""),
        (
            "  delivered / duplicates / lost",
            f"{_fmt(failing.get('delivered'))}/{_fmt(failing.get('duplicates'))}/{_fmt(failing.get('lost'))}"
            if failing
            else None,
            None,
            "10,000/0/0",
        ),
    ]
    for name, figures in (results.get("registry_cluster") or {}).items():
        label = name.replace("_", " ").replace("connections for", "connections_for")
        cluster, standalone = figures.get("cluster_p50_ms"), figures.get("standalone_p50_ms")
        rows.append(
            (
                f"registry {label}, 3-master cluster (vs standalone), p50",
                cluster,
                standalone,
                f"cluster{_times(cluster, standalone)} standalone",
            )
        )
    abuse = results.get("abuse") or {}
    if abuse:
        alone, flood = abuse.get("victim_alone_p50_ms"), abuse.get("victim_during_flood_p50_ms")
        rows += [
            ("another user's send while one user floods, p50 (vs alone)", flood, alone, f"flood{_times(flood, alone)}"),
            (
                "  the same, p99 (vs alone)",
                abuse.get("victim_during_flood_p99_ms"),
                abuse.get("victim_alone_p99_ms"),
                "",
            ),
            (
                "  flood frames / stored (20 burst + 10/s)",
                f"{_fmt(abuse.get('flood_frames'))}/{_fmt(abuse.get('flood_stored'))}",
                None,
                "per user, any connections",
            ),
            (
                "  connects tried / refused (10 per user)",
                f"{_fmt(abuse.get('connects_tried'))}/{_fmt(abuse.get('connects_refused'))}",
                None,
                "",
            ),
        ]
    return rows


def table(results: dict[str, Any]) -> str:
    ds = results["dataset"]
    lines = [
        f"dataset: {ds['users']:,} users, {ds['conversations']:,} conversations, {ds['messages']:,} messages",
        "",
        f"{'operation (ms)':<62} {'ours':>9} {'baseline':>10} {'ratio':>8}  target",
        "-" * 114,
    ]
    for name, ours, base, target in rows(results):
        ratio = f"{base / ours:,.1f}x" if ours and base else ""
        lines.append(f"{name:<62} {_fmt(ours):>9} {_fmt(base):>10} {ratio:>8}  {target}")
    e2e = results.get("e2e_local")
    lines.append("")
    if isinstance(e2e, dict) and "delivered" in e2e:
        lines.append(
            f"end to end (make dev): {e2e['clients']} clients, {e2e['messages']:,} messages, "
            f"{e2e['delivered']:,}/{e2e['expected']:,} deliveries, {e2e['duplicates']} duplicates, "
            f"{_fmt(e2e['msgs_per_s'])} msg/s, delivery p50 {_fmt(e2e['p50_ms'])} ms, p99 {_fmt(e2e['p99_ms'])} ms"
        )
    else:
        lines.append(f"end to end (make dev): {e2e if isinstance(e2e, str) else SKIPPED}")
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> bool:
    """A horizontal bar chart of latency per operation, ours beside the baseline (log scale); False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    picked = [
        (name, ours, base)
        for name, ours, base, _ in rows(results)
        if isinstance(ours, int | float) and ours and "cold import" not in name and "SQL statements" not in name
    ]
    picked = [row for row in picked if "p99" not in row[0] and "WAL" not in row[0]]
    names = [name.replace(", p50", "") for name, _, _ in picked]
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(picked) + 1.5))
    positions = list(range(len(picked)))
    height = 0.38
    ax.barh([p - height / 2 for p in positions], [o for _, o, _ in picked], height, label="ours", color="#2b7bba")
    ax.barh(
        [p + height / 2 for p in positions],
        [b or 0 for _, _, b in picked],
        height,
        label="naive baseline",
        color="#d95f02",
    )
    for p, (_, ours, base) in zip(positions, picked, strict=True):
        ax.text(ours * 1.08, p - height / 2, f"{ours:,.2f}" if ours < 100 else f"{ours:,.0f}", va="center", fontsize=8)
        if base:
            ax.text(base * 1.08, p + height / 2, f"{base:,.1f}", va="center", fontsize=8)
    ax.set_yticks(positions)
    ax.set_yticklabels(names, fontsize=9)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("milliseconds (median, log scale)")
    ds = results["dataset"]
    ax.set_title(
        f"chat-api hot paths: ours vs the naive design\n"
        f"{ds['users']:,} users, {ds['conversations']:,} conversations, {ds['messages']:,} messages",
        fontsize=10,
    )
    largest = max(max(o, b or 0) for _, o, b in picked)
    ax.set_xlim(right=largest * 4)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2, frameon=False)
    ax.grid(axis="x", which="both", alpha=0.25)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
