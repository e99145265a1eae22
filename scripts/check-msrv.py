#!/usr/bin/env python3
"""Checks the declared MSRV (`rust-version` in Cargo.toml) against what the
library's dependencies declare, and builds the library with that toolchain
when rustup can install it.

1. Every crate the library depends on (normal and build dependencies, all
   features, as resolved by Cargo.lock) must declare a `rust-version` no
   newer than ours: otherwise our MSRV is a promise the dependencies break.
2. When the MSRV toolchain is installed or installable, `cargo +MSRV check
   --lib --all-features` must pass. Where no toolchain can be fetched (an
   offline CI machine), this step says so instead of passing silently.
"""
import json
import subprocess
import sys


def version(text):
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def main():
    meta = json.loads(
        subprocess.check_output(
            ["cargo", "metadata", "--format-version", "1", "--all-features", "--locked"]
        )
    )
    packages = {p["id"]: p for p in meta["packages"]}
    root = next(p for p in meta["packages"] if p["name"] == "quorum-sessions")
    ours = root.get("rust_version")
    if not ours:
        sys.exit("Cargo.toml declares no rust-version")
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    seen, stack = set(), [root["id"]]
    while stack:
        node = nodes[stack.pop()]
        for dep in node["deps"]:
            kinds = {k["kind"] for k in dep["dep_kinds"]}
            if kinds & {None, "build"} and dep["pkg"] not in seen:
                seen.add(dep["pkg"])
                stack.append(dep["pkg"])
    newer = sorted(
        (packages[i]["rust_version"], packages[i]["name"], packages[i]["version"])
        for i in seen
        if packages[i].get("rust_version")
        and version(packages[i]["rust_version"]) > version(ours)
    )
    print(f"MSRV {ours}: {len(seen)} library dependencies checked")
    if newer:
        for rust, name, ver in newer:
            print(f"  {name} {ver} needs Rust {rust}")
        sys.exit(f"dependencies need a newer Rust than the declared rust-version {ours}")
    toolchains = subprocess.run(
        ["rustup", "toolchain", "list"], capture_output=True, text=True
    ).stdout
    have = any(line.startswith(ours) for line in toolchains.splitlines())
    if not have:
        install = subprocess.run(
            ["timeout", "300", "rustup", "toolchain", "install", ours, "--profile", "minimal"],
            capture_output=True,
            text=True,
        )
        have = install.returncode == 0
    if not have:
        print(
            f"toolchain {ours} is not installable here (offline?): "
            "only the dependencies' rust-version was checked"
        )
        return
    subprocess.run(
        ["cargo", f"+{ours}", "check", "--locked", "--lib", "--all-features", "-p", "quorum-sessions"],
        check=True,
    )
    print(f"the library builds with Rust {ours}")


if __name__ == "__main__":
    main()
