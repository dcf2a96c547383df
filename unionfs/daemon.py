"""The mount's lifetime: start the FUSE session, serve it, end it cleanly.

Run as `python -m unionfs.daemon CONFIG_JSON READY_FD` by unionfs/mounting.py (start_daemon),
which waits on READY_FD for "ok PID" or a one-line error; the daemon never holds the caller's
stdout/stderr. SIGTERM and SIGINT unmount and exit, like `pyunion umount`. `pyunion mount -f`
calls main() in its own process instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import sys
from collections.abc import Callable, Iterator
from typing import NoReturn

from unionfs.core import UnionFilesystem
from unionfs.options import MountConfig, backend, decode_config
from unionfs.ownership import IdMap
from unionfs.registry import forget_daemon, pid_file, record_daemon
from unionfs.union import Union

log = logging.getLogger("pyunion")
_reported: list[int] = []   # ready descriptors answered and closed (their numbers may be reused)


def fuse_options(cfg: MountConfig) -> set[str]:
    opts = {"default_permissions", "fsname=pyunion", "subtype=pyunion"}
    if os.geteuid() == 0:
        # Containers and other users must see the real permissions, checked by the kernel.
        opts |= {"allow_other", "default_permissions"}
    opts |= cfg.fuse_options
    opts.discard("rw")
    if cfg.readonly:
        opts.add("ro")
    return opts


async def _serve() -> None:
    """pyfuse3: one worker; the wait per request is a plain poll (unionfs/serving.py).

    PYUNION_WAIT=trio keeps pyfuse3's own wait (for comparing the two with bench/)."""
    import pyfuse3
    import trio

    from unionfs.serving import STOP_SIGNALS, direct_wait, fuse_fd
    fd = None
    if os.environ.get("PYUNION_WAIT") != "trio":
        try:
            fd = fuse_fd()
        except (OSError, RuntimeError) as e:   # e.g. no /proc: serve the slower way
            log.warning("falling back to pyfuse3's own request wait: %s", e)
    if fd is None:
        async with trio.open_nursery() as nursery:
            async def watch_signals() -> None:
                with trio.open_signal_receiver(*STOP_SIGNALS) as sigs:
                    async for _ in sigs:
                        pyfuse3.terminate()
                        return

            nursery.start_soon(watch_signals)
            await pyfuse3.main(min_tasks=1, max_tasks=1)
            nursery.cancel_scope.cancel()
        return
    with direct_wait(fd):
        await pyfuse3.main(min_tasks=1, max_tasks=1)


def raise_fd_limit() -> int:
    """Descriptors are the daemon's working set (open files, directory descriptors for deep
    paths): take the hard limit as the soft one. Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            pass
    return soft


@contextlib.contextmanager
def _stderr_captured() -> Iterator[Callable[[], str]]:
    """Collect what is written to fd 2 (by libfuse and the fusermount3 it runs) meanwhile;
    it is passed on to the real stderr (the log) afterwards."""
    import tempfile
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)

        def said() -> str:
            os.fsync(2)
            tmp.seek(0)
            return tmp.read().decode(errors="replace")
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            data = tmp.read()
            if data:
                with contextlib.suppress(OSError):
                    os.write(2, data)


def _reason(text: str) -> str:
    """fusermount3's (or libfuse's) own last line, without its program-name prefix."""
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    for line in reversed(lines):
        if line.startswith("fusermount3:"):
            return line.removeprefix("fusermount3:").strip()
    return lines[-1].removeprefix("fuse:").strip() if lines else ""


def serve(cfg: MountConfig, ready_fd: int | None = None) -> int:
    """Mount and serve until unmounted or signalled; report readiness on ready_fd."""
    raise_fd_limit()
    record = pid_file(cfg.target)

    def report_ready(*_: object) -> None:
        warning = record_daemon(record, cfg.target,
                                [x for x in (cfg.upper, *cfg.lowers, cfg.workdir) if x])
        if warning:
            log.warning("%s", warning)
        if ready_fd is not None:
            os.write(ready_fd, f"ok {os.getpid()}\n".encode())
            os.close(ready_fd)
            _reported.append(ready_fd)

    def report_error(e: BaseException) -> int:
        msg = f"cannot mount {cfg.target}: {e}"
        if ready_fd is not None:
            log.error("%s", msg)     # the log (-o log=) keeps it too
            os.write(ready_fd, ("error: " + msg.replace("\n", " ") + "\n").encode())
            os.close(ready_fd)
            _reported.append(ready_fd)
        else:
            print(f"pyunion: {msg}", file=sys.stderr)
        return 1

    try:
        union = Union(cfg.upper, cfg.lowers, cfg.workdir, fsync=cfg.fsync, override=cfg.override,
                      uidmap=IdMap.parse(cfg.uidmapping) if cfg.uidmapping else None,
                      gidmap=IdMap.parse(cfg.gidmapping) if cfg.gidmapping else None)
        fs = UnionFilesystem(union, timeout=cfg.timeout, passthrough_lower=cfg.passthrough_lower)
    except Exception as e:  # noqa: BLE001 - one line to the waiting parent, whatever went wrong
        return report_error(e)
    if backend(cfg) == "kernel":
        return _serve_kernel(cfg, fs, record, report_ready, report_error)
    return _serve_pyfuse3(cfg, fs, record, report_ready, report_error)


def _serve_kernel(cfg, fs, record, report_ready, report_error) -> int:
    """Our own transport (unionfs/transport): mount(2) or fusermount3, then its loop."""
    from unionfs import transport
    started = False

    def ready(session: object) -> None:
        nonlocal started
        started = True
        report_ready()

    def run() -> None:
        transport.serve(fs, cfg.target, fuse_options(cfg), passthrough=cfg.passthrough,
                        ready=ready)

    profile_to = os.environ.get("PYUNION_PROFILE")  # a pstats file: where the daemon's time went
    try:
        if profile_to:
            import cProfile
            cProfile.runctx("run()", globals(), {"run": run}, profile_to)
        else:
            run()
    except Exception as e:
        if not started:
            return report_error(e)
        log.exception("daemon stopped on an error; mount removed")
    finally:
        if started:
            forget_daemon(record)
    return 0


def _serve_pyfuse3(cfg, fs, record, report_ready, report_error) -> int:
    try:
        import pyfuse3
        import trio

        from unionfs.operations import FuseOperations
    except ImportError as e:
        return report_error(f"backend=pyfuse3 needs pyfuse3 (pip install 'pyunion[pyfuse3]'): {e}")
    try:
        with _stderr_captured() as said:
            try:
                pyfuse3.init(FuseOperations(fs), cfg.target, fuse_options(cfg))
            except RuntimeError as e:
                # libfuse says only "fuse_session_mount failed"; fusermount3 said why.
                raise RuntimeError(_reason(said()) or str(e)) from None
    except Exception as e:  # noqa: BLE001 - one line to the waiting parent, whatever went wrong
        return report_error(e)
    report_ready()
    unmounted_cleanly = False
    profile_to = os.environ.get("PYUNION_PROFILE")  # a pstats file: where the daemon's time went
    try:
        if profile_to:
            import cProfile
            cProfile.runctx("trio.run(_serve)", globals(), {"trio": trio, "_serve": _serve},
                            profile_to)
        else:
            trio.run(_serve)
        unmounted_cleanly = True
    finally:
        pyfuse3.close(unmount=True)
        forget_daemon(record)
        if not unmounted_cleanly:
            log.error("daemon stopped on an error; mount removed")
    return 0


def main(argv: list[str]) -> int:
    """Serve the mount of argv[0] (encode_config's JSON) in this process; readiness on the
    descriptor argv[1] when given, else errors on stderr (`pyunion mount -f`)."""
    cfg = decode_config(argv[0])
    ready_fd = int(argv[1]) if len(argv) > 1 else None
    logging.basicConfig(level=logging.DEBUG if cfg.debug else logging.WARNING,
                        format="pyunion[%(process)d] %(levelname)s %(message)s")
    return serve(cfg, ready_fd)


def serve_detached(cfg: MountConfig | str, ready_fd: int) -> NoReturn:
    """The daemon's side of mounting.start_daemon, spawned or forked: serve CFG (a MountConfig
    or encode_config's JSON) and end the process here. Whatever goes wrong before the mount is
    ready reaches the starter as one line on READY_FD."""
    code = 1
    try:
        if isinstance(cfg, str):
            cfg = decode_config(cfg)
        logging.basicConfig(level=logging.DEBUG if cfg.debug else logging.WARNING,
                            format="pyunion[%(process)d] %(levelname)s %(message)s")
        code = serve(cfg, ready_fd)
    except BaseException as e:  # noqa: BLE001 - whatever happens, the process must end here
        import traceback
        if ready_fd not in _reported:
            with contextlib.suppress(OSError):
                os.write(ready_fd, f"error: {e}".replace("\n", " ").encode() + b"\n")
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def detached_main(argv: list[str]) -> NoReturn:
    """`python -m unionfs.daemon CONFIG READY_FD`, spawned by mounting.start_daemon in a session
    of its own: fork once (this fresh interpreter has no other thread), so the daemon is
    re-parented at once and its starter can be waited for; the daemon serves."""
    ready_fd = int(argv[1])
    if os.fork() != 0:
        os._exit(0)
    serve_detached(argv[0], ready_fd)


if __name__ == "__main__":
    detached_main(sys.argv[1:])
