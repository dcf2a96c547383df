"""`pyunion-runtime` / `pyunion runtime`: runc's command line, error strings and exit codes.

Errors are one line: `time=... level=error msg=...` on stderr, or, with --log FILE, a line in FILE
(text or json, as containerd's shim reads it) plus the bare message on stderr, as runc does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import unionfs
from snapshotter.runtime import features, rootless, spec
from snapshotter.runtime.errors import ContainerError
from snapshotter.runtime.lifecycle import Runtime
from snapshotter.runtime.rootless import default_state_root

USAGE = """\
usage: pyunion-runtime [--root DIR] [--log FILE] [--log-format text|json] COMMAND ...
commands:
  create --bundle DIR [--pid-file F] ID     build the container; its process waits for start
  start ID                                  run the user program of a created container
  state ID                                  state JSON on stdout
  kill [--all] ID [SIGNAL]                  send SIGNAL (name or number, default TERM)
  delete [--force] ID                       remove a stopped container (--force: kill it first)
  run --bundle DIR [--detach] [--pid-file F] ID   create + start (+ wait + delete)
  exec [--process F | ID CMD...] [--detach] [--pid-file F] [--tty] [--console-socket S] ID
                                            run another process in the running container
  list [--format table|json] [--quiet]      all containers under --root
  ps [--format table|json] ID [PS ARGS]     the container's processes (ps -ef rows, or pids)
  update [--resources FILE|-] [--memory N ...] ID   change cgroup limits of a live container
  pause ID / resume ID                      freeze / thaw every process (cgroup freezer)
  events [--stats] [--interval 5s] ID       cgroup statistics as JSON (once with --stats)
  features                                  what this runtime supports (runtime-spec features)
  spec [--bundle DIR]                       write a default config.json"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise ContainerError(f"{self.prog}: {message}")


class Logger:
    def __init__(self, path: str | None, fmt: str) -> None:
        self.path, self.fmt = path, fmt

    def _line(self, level: str, msg: str) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if self.fmt == "json":
            return json.dumps({"level": level, "msg": msg, "time": stamp})
        return f"time={json.dumps(stamp)} level={level} msg={json.dumps(msg)}"

    def log(self, level: str, msg: str) -> None:
        if self.path:
            try:
                with open(self.path, "a") as f:
                    f.write(self._line(level, msg) + "\n")
            except OSError:
                pass
            if level == "error":
                print(msg, file=sys.stderr)
        else:
            print(self._line(level, msg), file=sys.stderr)

    def warn(self, msg: str) -> None:
        self.log("warning", msg)


def _global(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    opts: dict[str, Any] = {"root": default_state_root(), "log": None, "log_format": "text"}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        key = name.lstrip("-").replace("-", "_")
        if key in ("root", "log", "log_format", "criu", "rootless"):
            if not eq:
                i += 1
                if i >= len(argv):
                    raise ContainerError(f"flag needs an argument: {name}")
                value = argv[i]
            opts[key] = value
        elif key in ("debug", "systemd_cgroup", "no_pivot"):
            opts[key] = True
        elif key in ("help", "h"):
            opts["help"] = True
        elif key in ("version", "v"):
            opts["version"] = True
        else:
            raise ContainerError(f"flag provided but not defined: {name}")
        i += 1
    if opts.get("log_format") not in ("text", "json"):
        raise ContainerError(f"invalid log-format: {opts['log_format']}")
    return opts, argv[i:]


def _subparser(cmd: str) -> _Parser:
    p = _Parser(prog=f"pyunion-runtime {cmd}", add_help=False)
    p.add_argument("--root")
    if cmd in ("create", "run"):
        p.add_argument("--bundle", "-b", default=".")
        p.add_argument("--pid-file")
        p.add_argument("--console-socket")
        p.add_argument("--no-pivot", action="store_true")
        p.add_argument("--no-new-keyring", action="store_true")
        p.add_argument("--preserve-fds", type=int, default=0)
        if cmd == "run":
            p.add_argument("--detach", "-d", action="store_true")
        p.add_argument("id")
    elif cmd in ("start", "state"):
        p.add_argument("id")
    elif cmd == "kill":
        p.add_argument("--all", "-a", action="store_true")
        p.add_argument("id")
        p.add_argument("signal", nargs="?", default="TERM")
    elif cmd == "delete":
        p.add_argument("--force", "-f", action="store_true")
        p.add_argument("id")
    elif cmd == "list":
        p.add_argument("--format", "-f", choices=("table", "json"), default="table")
        p.add_argument("--quiet", "-q", action="store_true")
    elif cmd == "ps":
        p.add_argument("--format", "-f", choices=("table", "json"), default="table")
        p.add_argument("id")
        p.add_argument("ps_args", nargs=argparse.REMAINDER)
    elif cmd in ("pause", "resume"):
        p.add_argument("id")
    elif cmd == "events":
        p.add_argument("--stats", action="store_true")
        p.add_argument("--interval", default="5s")
        p.add_argument("id")
    elif cmd == "update":
        p.add_argument("--resources", "-r")
        for flag in _UPDATE_FLAGS:
            p.add_argument(flag)
        p.add_argument("id")
    elif cmd == "features":
        pass
    elif cmd == "exec":
        p.add_argument("--process", "-p")
        p.add_argument("--detach", "-d", action="store_true")
        p.add_argument("--pid-file")
        p.add_argument("--tty", "-t", action="store_true")
        p.add_argument("--console-socket")
        p.add_argument("--cwd")
        p.add_argument("--env", "-e", action="append", default=[])
        p.add_argument("--user", "-u")
        p.add_argument("--additional-gids", "-g", action="append", default=[])
        p.add_argument("--cap", "-c", action="append", default=[])
        p.add_argument("--no-new-privs", action="store_true")
        p.add_argument("--preserve-fds", type=int, default=0)
        p.add_argument("--process-label")
        p.add_argument("--apparmor")
        p.add_argument("--ignore-paused", action="store_true")
        p.add_argument("id")
        p.add_argument("command", nargs=argparse.REMAINDER)
    elif cmd == "spec":
        p.add_argument("--bundle", "-b", default=".")
        p.add_argument("--rootless", action="store_true")
    else:
        raise ContainerError(f"No help topic for '{cmd}'", exit_code=3)
    return p


# runc update's flags -> (resources section, key, parse as a size?)
_UPDATE_FLAGS = {
    "--memory": ("memory", "limit", True), "--memory-swap": ("memory", "swap", True),
    "--memory-reservation": ("memory", "reservation", True),
    "--kernel-memory": ("memory", "kernel", True),
    "--kernel-memory-tcp": ("memory", "kernelTCP", True),
    "--cpu-share": ("cpu", "shares", False), "--cpu-quota": ("cpu", "quota", False),
    "--cpu-period": ("cpu", "period", False), "--cpu-rt-period": ("cpu", "realtimePeriod", False),
    "--cpu-rt-runtime": ("cpu", "realtimeRuntime", False),
    "--cpuset-cpus": ("cpu", "cpus", None), "--cpuset-mems": ("cpu", "mems", None),
    "--pids-limit": ("pids", "limit", False), "--blkio-weight": ("blockIO", "weight", False),
}
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _size(text: str) -> int:
    """"-1", "1024", "64m", "1.5G" (docker's RAMInBytes, as runc update parses)."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b") if text != "-1" else text
    num, unit = (t[:-1], t[-1]) if t and t[-1] in _UNITS and t[-1].isalpha() else (t, "")
    try:
        return int(float(num) * _UNITS[unit]) if num != "-1" else -1
    except ValueError:
        raise ContainerError(f"invalid value for size: {text!r}", exit_code=2) from None


def _update_resources(a: argparse.Namespace) -> dict[str, Any]:
    if a.resources:
        try:
            text = sys.stdin.read() if a.resources == "-" else Path(a.resources).read_text()
            res = json.loads(text)
        except (OSError, json.JSONDecodeError) as e:
            raise ContainerError(f"unable to read resources: {e}") from None
        if not isinstance(res, dict):
            raise ContainerError("unable to read resources: not a JSON object")
        return res
    out: dict[str, Any] = {}
    for flag, (section, key, size) in _UPDATE_FLAGS.items():
        value = getattr(a, flag.lstrip("-").replace("-", "_"))
        if value is None:
            continue
        if size is None:
            parsed: Any = value
        elif size:
            parsed = _size(value)
        else:
            try:
                parsed = int(value)
            except ValueError:
                raise ContainerError(f"invalid value {value!r} for flag {flag}",
                                     exit_code=2) from None
        out.setdefault(section, {})[key] = parsed
    return out


def _interval(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for u in ("ms", "s", "m", "h"):
        if text.endswith(u):
            try:
                return float(text[:-len(u)]) * units[u]
            except ValueError:
                break
    raise ContainerError(f"invalid duration {text!r}", exit_code=2)


def _ps_table(pids: list[int], ps_args: list[str]) -> str:
    """runc ps: run ps(1) on the host, keep the header and the container's rows."""
    import subprocess
    args = [a for a in ps_args if a != "--"] or ["-ef"]
    out = subprocess.run(["ps", *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise ContainerError(f"ps: {out.stderr.strip()}")
    lines = out.stdout.splitlines()
    header = lines[0].split()
    if "PID" not in header:
        raise ContainerError("couldn't find PID field in ps output")
    col = header.index("PID")
    wanted = set(pids)
    rows = [ln for ln in lines[1:] if len(ln.split()) > col and ln.split()[col].isdigit()
            and int(ln.split()[col]) in wanted]
    return "\n".join([lines[0], *rows])


def _check_preserved(n: int) -> None:
    """--preserve-fds N: fds 3..N+2 must be open now, or one of our own fds would take a
    missing number and be handed to the container."""
    if n < 0:
        raise ContainerError("--preserve-fds must not be negative", exit_code=2)
    for fd in range(3, 3 + n):
        try:
            os.fstat(fd)
        except OSError:
            raise ContainerError(f"--preserve-fds {n}: fd {fd} is not open") from None


def _exec_process(a: argparse.Namespace, rt: Runtime) -> dict[str, Any]:
    """The process to exec: --process FILE as is, else the container's process with the
    command line's changes (runc's newProcess)."""
    if a.process:
        try:
            proc = json.loads(Path(a.process).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ContainerError(f"unable to read process {a.process}: {e}") from None
        if not isinstance(proc, dict):
            raise ContainerError(f"unable to read process {a.process}: not a JSON object")
        return proc
    if not a.command:
        raise ContainerError("exec: args must not be empty", exit_code=2)
    import copy
    proc = copy.deepcopy(rt.sd.read(a.id).config.raw["process"])
    proc["args"] = a.command
    proc["terminal"] = a.tty
    proc.pop("consoleSize", None)
    proc["env"] = [*(proc.get("env") or []), *a.env]
    if a.cwd:
        proc["cwd"] = a.cwd
    if a.user:
        uid, _, gid = a.user.partition(":")
        try:
            proc["user"] = {**(proc.get("user") or {}), "uid": int(uid),
                            "gid": int(gid) if gid else 0}
        except ValueError:
            raise ContainerError(f"invalid --user {a.user!r}: uid[:gid] numbers",
                                 exit_code=2) from None
    if a.additional_gids:
        proc.setdefault("user", {})["additionalGids"] = [int(g) for g in a.additional_gids]
    for cap in a.cap:
        caps = proc.setdefault("capabilities", {})
        for what in ("bounding", "effective", "permitted"):
            caps.setdefault(what, []).append(cap)
    if a.no_new_privs:
        proc["noNewPrivileges"] = True
    return proc


def _table(rows: list[dict[str, Any]]) -> str:
    """runc's tabwriter layout: columns at least 12 wide, 3 spaces of padding."""
    head = ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
    cells = [head] + [[r["id"], str(r["pid"]), r["status"], r["bundle"], r["created"],
                       r["owner"]] for r in rows]
    widths = [max(12, max(len(c[i]) for c in cells) + 3) for i in range(len(head))]
    return "\n".join("".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)) + row[-1]
                     for row in cells)


def _dispatch(cmd: str, a: argparse.Namespace, rt: Runtime) -> int:
    if cmd in ("create", "run"):
        # --no-pivot (MS_MOVE + chroot in runc) and --no-new-keyring are accepted: we always
        # pivot_root (stronger) and never make a session keyring (docs/runtime.md).
        _check_preserved(a.preserve_fds)
        if cmd == "create":
            rt.create(a.id, a.bundle, a.pid_file, a.console_socket, a.preserve_fds)
            return 0
        return rt.run(a.id, a.bundle, a.pid_file, detach=a.detach,
                      console_socket=a.console_socket, preserve_fds=a.preserve_fds)
    if cmd == "start":
        rt.start(a.id)
    elif cmd == "state":
        sys.stdout.write(json.dumps(rt.state(a.id), indent=2))
        sys.stdout.flush()
    elif cmd == "kill":
        rt.kill(a.id, a.signal, all_=a.all)
    elif cmd == "delete":
        rt.delete(a.id, force=a.force)
    elif cmd == "list":
        rows = rt.list()
        if a.quiet:
            print("\n".join(r["id"] for r in rows)) if rows else None
        elif a.format == "json":
            print(json.dumps(rows or None))
        else:
            print(_table(rows))
    elif cmd == "ps":
        if a.format == "json":
            print(json.dumps(rt.pids(a.id)))
        else:
            print(_ps_table(rt.pids(a.id), a.ps_args))
    elif cmd == "exec":
        _check_preserved(a.preserve_fds)
        try:  # runc: every exec failure is "exec failed: ..." with exit status 255
            proc = _exec_process(a, rt)
            if a.tty and a.process:
                proc["terminal"] = True
            return rt.exec(a.id, proc, detach=a.detach, pid_file=a.pid_file,
                           console_socket=a.console_socket, ignore_paused=a.ignore_paused,
                           preserve_fds=a.preserve_fds)
        except ContainerError as e:
            raise ContainerError(f"exec failed: {e}", exit_code=255) from None
    elif cmd == "pause":
        rt.pause(a.id)
    elif cmd == "resume":
        rt.resume(a.id)
    elif cmd == "update":
        rt.update(a.id, _update_resources(a))
    elif cmd == "events":
        interval = _interval(a.interval)
        while True:
            print(json.dumps(rt.stats(a.id)), flush=True)
            if a.stats:
                break
            time.sleep(interval)
    elif cmd == "features":
        print(json.dumps(features.document(), indent=4))
    elif cmd == "spec":
        path = os.path.join(a.bundle, "config.json")
        if os.path.exists(path):
            raise ContainerError(f"File {path} exists. Remove it first")
        with open(path, "x") as f:
            config = spec.default_spec()
            if a.rootless:  # as runc's: the caller's own ids as root, no cgroup resources
                rootless.make_rootless(
                    config, [{"containerID": 0, "hostID": os.geteuid(), "size": 1}],
                    [{"containerID": 0, "hostID": os.getegid(), "size": 1}])
            json.dump(config, f, indent="\t")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logger = Logger(None, "text")
    try:
        opts, rest = _global(argv)
        logger = Logger(opts["log"], opts["log_format"])
        if opts.get("version"):
            print(f"pyunion-runtime {unionfs.__version__}\nspec: 1.0.2")
            return 0
        if opts.get("help") or not rest:
            print(USAGE)
            return 0
        cmd, args = rest[0], rest[1:]
        a = _subparser(cmd).parse_args(args)
        root = a.root or opts["root"]
        return _dispatch(cmd, a, Runtime(root, warn=logger.warn))
    except ContainerError as e:
        logger.log("error", str(e))
        return e.exit_code
    except KeyboardInterrupt:
        logger.log("error", "interrupted")
        return 130
    except OSError as e:
        logger.log("error", f"{e.strerror}: {e.filename}" if e.filename else str(e))
        return 1


if __name__ == "__main__":
    sys.exit(main())
