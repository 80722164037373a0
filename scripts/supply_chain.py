#!/usr/bin/env python3
"""Supply-chain gate: cargo-deny checks advisories (against an offline RustSec snapshot), licences, bans and
sources as configured in deny.toml; before that, every accepted advisory must carry a reason and an
unexpired date, and every workspace crate must be unpublished.

Usage: python3 scripts/supply_chain.py [--db DIR] [--today YYYY-MM-DD] [--no-deny]

DIR is the advisory snapshot, by default $ADVISORY_DB or ../shared/advisory-db (relative to the workspace
root). cargo-deny CARGO_DENY_VERSION is installed once into $DATADONOR_TOOLS (default
/var/tmp/datadonor-tools, outside the clone, reused between runs) with `cargo install --locked`.

cargo-deny (0.20) has no "plain directory" database mode: it opens <db-path>/<name>-<hash>/crates and
reads the age of the copy from <that>/.git/FETCH_HEAD's modification time (otherwise from `git show
HEAD`). The snapshot has no git history, so it is copied to the path cargo-deny derives for the default
URL, and FETCH_HEAD is stamped with the snapshot's own date: the staleness check then measures the
snapshot's real age.
"""

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib

# The version deny.toml and the database layout below are written for.
CARGO_DENY_VERSION = "0.20.2"
# cargo-deny's directory for https://github.com/rustsec/advisory-db (lower-cased URL, XxHash64 with
# seed 0xca80de71), as in its own test fixture tests/advisory-db/advisory-db-3157b0e258782691.
DB_DIR_NAME = "advisory-db-3157b0e258782691"
EXPIRES = re.compile(r"expires (\d{4}-\d{2}-\d{2})\s*$")
WARN_DAYS = 30
STALE_WARN_DAYS = 90


def check_ignores(cfg: dict, today: dt.date) -> list[str]:
    errors = []
    for entry in cfg.get("advisories", {}).get("ignore", []):
        if isinstance(entry, str) or "id" not in entry:
            # Bare ids and yanked-crate specs: both need a reason and a date too.
            errors.append(f"ignore entry {entry!r}: write it as {{ id = ..., reason = \"... expires YYYY-MM-DD\" }}")
            continue
        ident, reason = entry["id"], entry.get("reason", "")
        m = EXPIRES.search(reason)
        if not m:
            errors.append(f"{ident}: the reason must end with 'expires YYYY-MM-DD'")
            continue
        expires = dt.date.fromisoformat(m.group(1))
        if today > expires:
            errors.append(f"{ident}: accepted until {expires}, expired; review it again (fix, or extend with a new reason)")
        elif (expires - today).days <= WARN_DAYS:
            print(f"warning: {ident}: acceptance expires {expires} ({(expires - today).days} days)", file=sys.stderr)
    return errors


def check_unpublished() -> list[str]:
    """Every workspace crate must say `publish = false`: none is meant for crates.io, and deny.toml's
    `allow-wildcard-paths` accepts path dependencies (no version) only in unpublished crates."""
    out = subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
        check=True, capture_output=True, text=True,
    ).stdout
    return [
        f"{p['name']} ({os.path.relpath(p['manifest_path'])}): add `publish = false` to its [package]"
        for p in json.loads(out)["packages"]
        if p.get("publish") != []
    ]


def snapshot_date(db: str) -> dt.datetime:
    text = open(os.path.join(db, "SNAPSHOT.md"), encoding="utf-8").read()
    m = re.search(r"\((\d{4}-\d{2}-\d{2})\)", text)
    if not m:
        sys.exit(f"error: no (YYYY-MM-DD) date in {db}/SNAPSHOT.md")
    return dt.datetime.fromisoformat(m.group(1)).replace(tzinfo=dt.timezone.utc)


def lay_out_db(cfg: dict, db: str) -> None:
    root = cfg.get("advisories", {}).get("db-path")
    if not root:
        sys.exit("error: deny.toml must set [advisories] db-path")
    target = os.path.join(root, DB_DIR_NAME)
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(os.path.join(db, "crates"), os.path.join(target, "crates"))
    os.makedirs(os.path.join(target, ".git"))
    fetch_head = os.path.join(target, ".git", "FETCH_HEAD")
    open(fetch_head, "w").close()
    date = snapshot_date(db)
    os.utime(fetch_head, (date.timestamp(), date.timestamp()))
    age = (dt.datetime.now(dt.timezone.utc) - date).days
    print(f"advisory snapshot {db} of {date.date()} ({age} days old)", file=sys.stderr)
    if age > STALE_WARN_DAYS:
        print(f"warning: the advisory snapshot is {age} days old; advisories newer than it are not checked", file=sys.stderr)


def cargo_deny(tools: str) -> str:
    """The pinned cargo-deny, installed into `tools` unless it is already there."""
    exe = os.path.join(tools, "bin", "cargo-deny")
    wanted = f"cargo-deny {CARGO_DENY_VERSION}"

    def version() -> str:
        try:
            return subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""

    if version() != wanted:
        print(f"installing {wanted} into {tools}", file=sys.stderr)
        # Its own temporary build directory, not the workspace's.
        env = {k: v for k, v in os.environ.items() if k != "CARGO_TARGET_DIR"}
        subprocess.run(
            ["cargo", "install", "--locked", "cargo-deny", "--version", CARGO_DENY_VERSION, "--root", tools],
            check=True, env=env,
        )
        if version() != wanted:
            sys.exit(f"error: {exe} --version does not print {wanted}")
    return exe


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default=os.environ.get("ADVISORY_DB"))
    ap.add_argument("--today", type=dt.date.fromisoformat, default=dt.datetime.now(dt.timezone.utc).date())
    ap.add_argument("--no-deny", action="store_true", help="only check the accepted advisories' dates and the crates' publish flags")
    args = ap.parse_args()
    # Everything below is relative to the workspace root.
    db = os.path.abspath(args.db) if args.db else None
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    db = db or os.path.abspath("../shared/advisory-db")

    with open("deny.toml", "rb") as f:
        cfg = tomllib.load(f)
    errors = check_ignores(cfg, args.today) + check_unpublished()
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if errors:
        return 1
    if args.no_deny:
        return 0
    deny = cargo_deny(os.environ.get("DATADONOR_TOOLS", "/var/tmp/datadonor-tools"))
    lay_out_db(cfg, db)
    # --frozen: no network (no advisory fetch, no crate download) and Cargo.lock must not change.
    return subprocess.call([deny, "--frozen", "--color", "never", "check", "--hide-inclusion-graph"])


if __name__ == "__main__":
    sys.exit(main())
