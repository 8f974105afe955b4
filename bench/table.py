#!/usr/bin/env python3
"""Prints the comparison table for one bench/compare run: the figures of each
server and the ratios Meerkat / peer (for a "lower is better" figure, a ratio
below 1 favours Meerkat)."""
import json
import os
import sys

ROWS = [
    # (field, label, higher_is_better)
    ("logins_per_s", "logins/s", True),
    ("login_p50_us", "time to session p50 (µs)", False),
    ("login_p99_us", "time to session p99 (µs)", False),
    ("login_failures", "login failures", False),
    ("msgs_per_s", "delivered msgs/s", True),
    ("ttd_p50_us", "TTD p50 (µs)", False),
    ("ttd_p99_us", "TTD p99 (µs)", False),
    ("ttd_p999_us", "TTD p99.9 (µs)", False),
    ("ttd_max_us", "TTD max (µs)", False),
    ("lost", "lost", False),
    ("duplicated", "duplicated", False),
    ("rss_per_session_bytes", "server RSS per session (B)", False),
    ("server_cpu_us_per_msg", "server CPU per message (µs)", False),
    ("generator_late_p99_us", "generator lateness p99 (µs)", False),
    ("valid", "valid run", True),
]


def load(path):
    with open(path) as f:
        lines = [l for l in f if l.strip()]
    r = json.loads(lines[-1])
    server = r.get("server") or {}
    for k in ("rss_per_session_bytes", "server_cpu_us_per_msg"):
        if k not in r and k in server:
            r[k] = server[k]
    return r


def fmt(v):
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "-" if v is None else str(v)


def main():
    out, servers = sys.argv[1], sys.argv[2:]
    res = {}
    for s in servers:
        p = os.path.join(out, s + ".json")
        if os.path.exists(p):
            res[s] = load(p)
        else:
            print(f"{s}: no result ({p} missing)")
    if not res:
        return 1
    any_r = next(iter(res.values()))
    print(f"\nscenario {any_r.get('scenario')}  users {any_r.get('users')}  commit {any_r.get('commit')}")
    print("settings: STARTTLS/TLS 1.3, ECDSA P-256 certs; SCRAM-SHA-256 (Prosody: SCRAM-SHA-1); "
          "storage: Meerkat SQLite, ejabberd Mnesia, Prosody files; machine: "
          f"{os.cpu_count()} cores")
    peers = [s for s in servers if s != "meerkat" and s in res]
    head = f"{'figure':32}" + "".join(f"{s:>14}" for s in res) + "".join(f"{'meerkat/' + p:>18}" for p in peers)
    print(head)
    print("-" * len(head))
    for field, label, _ in ROWS:
        vals = {s: r.get(field) for s, r in res.items()}
        if all(v is None for v in vals.values()):
            continue
        line = f"{label:32}" + "".join(f"{fmt(vals[s]):>14}" for s in res)
        m = vals.get("meerkat")
        for p in peers:
            v = vals.get(p)
            if isinstance(m, (int, float)) and isinstance(v, (int, float)) and not isinstance(m, bool) and v:
                line += f"{m / v:>18.2f}"
            else:
                line += f"{'-':>18}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
