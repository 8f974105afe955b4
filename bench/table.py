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
    # presence
    ("presence_per_s", "presence deliveries/s", True),
    ("presence_expected", "presence deliveries expected", True),
    ("finals_missing", "final stamps missing", False),
    ("setup_incomplete", "users not set up at start", False),
    ("churn_logins_per_s", "logins/s under churn", True),
    ("churn_login_p99_us", "churn login p99 (µs)", False),
    # sm-resume
    ("cuts", "connections cut", True),
    ("resumes_ok", "resumes ok", True),
    ("resumes_failed", "resumes failed", False),
    ("resume_p50_us", "resume time p50 (µs)", False),
    ("resume_p99_us", "resume time p99 (µs)", False),
    ("resent", "messages re-sent after resume", False),
    # muc-light, muc
    ("deliveries_per_s", "room deliveries/s", True),
    ("deliveries_expected", "room deliveries expected", True),
    ("rooms_ready", "rooms ready", True),
    ("rooms_failed", "rooms failed", False),
    ("joins_ok", "room joins complete", True),
    ("setup_max_us", "setup time max (µs)", False),
    ("server_cpu_us_per_delivery", "server CPU per delivery (µs)", False),
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
        skipped = os.path.join(out, s + ".skipped")
        if os.path.exists(p):
            res[s] = load(p)
        elif os.path.exists(skipped):
            with open(skipped) as f:
                print(f"{s}: not run: {f.read().strip()}")
        else:
            print(f"{s}: no result ({p} missing)")
    if not res:
        return 1
    any_r = next(iter(res.values()))
    print(f"\nscenario {any_r.get('scenario')}  users {any_r.get('users')}  commit {any_r.get('commit')}  "
          f"transport {any_r.get('transport', 'tcp')}")
    settings = os.path.join(out, "settings.txt")
    if os.path.exists(settings):
        with open(settings) as f:
            print(f.read().rstrip())
    else:
        print("settings: STARTTLS/TLS 1.3 (websocket: plain ws://), ECDSA P-256 certs; "
              "SCRAM-SHA-256 (Prosody: SCRAM-SHA-1); "
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
