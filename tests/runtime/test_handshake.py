"""The runtime <-> init handshake (snapshotter/runtime/handshake.py) without namespaces: the
encoding, and the channel's promise that a dead peer ends a wait instead of hanging it."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from snapshotter.runtime import handshake as hs
from snapshotter.runtime.errors import ContainerError

EVERY = [hs.Ok(), hs.Error("mount /proc: permission denied"), hs.UserNs(), hs.Pid(4242),
         hs.Hooks(), hs.Ready(), hs.Exec()]


@pytest.mark.parametrize("msg", EVERY, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(msg):
    assert hs.decode(hs.encode(msg)) == msg


def test_every_message_type_has_one_tag():
    assert {type(m) for m in EVERY} == set(hs.TAGS.values())


@pytest.mark.parametrize("raw", [
    b"", b"{bad", b"[]", b'"ok"', b"{}", b'{"t": "nope"}', b'{"t": "pid"}',
    b'{"t": "pid", "pid": "12"}', b'{"t": "pid", "pid": true}', b'{"t": "pid", "pid": 1, "x": 2}',
    b'{"t": "ok", "msg": "x"}', b'{"t": "error", "msg": null}',
])
def test_malformed_messages_are_refused(raw):
    with pytest.raises(ContainerError, match="bad handshake message"):
        hs.decode(raw)


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield hs.Channel(a), b
    a.close()
    b.close()


@pytest.fixture
def alarm():
    """A wait that hangs fails the test after 20 s instead of hanging the suite."""
    def hung(_s, _f):
        raise AssertionError("the handshake wait hung")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _fork(body) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            body()
        finally:
            os._exit(0)
    return pid


def test_watched_peer_dies_while_a_sibling_holds_its_end(pair, alarm):
    """Stage A killed after its fork: B keeps the shared end open, so no EOF ever comes; the
    pidfd of A ends the wait (before: runtime and B both sat in recv, the 1 MiB OOM hang)."""
    ch, theirs = pair
    r, w = os.pipe()

    def stage_a():
        if os.fork() == 0:  # "stage B": holds the end, waits for an Ok that never comes
            os.close(w)
            os.read(r, 1)
            os._exit(0)
        os.kill(os.getpid(), signal.SIGKILL)
    pid = _fork(stage_a)
    theirs.close()
    watched = hs.watch(pid)
    try:
        with pytest.raises(hs.PeerGone):
            ch.recv(watch=watched)
    finally:
        os.close(watched)
        os.close(w)  # ends "stage B"
        os.close(r)
        os.waitpid(pid, 0)


def test_message_sent_just_before_exit_is_delivered(pair, alarm):
    ch, theirs = pair
    pid = _fork(lambda: theirs.send(hs.encode(hs.Pid(7))))
    theirs.close()
    os.waitpid(pid, 0)  # gone (and reaped) before we even look
    watched = hs.watch(pid)
    try:
        assert ch.recv(watch=watched) == hs.Pid(7)
        with pytest.raises(hs.PeerGone):
            ch.recv(watch=watched)
    finally:
        os.close(watched)


def test_watch_ignores_a_live_peer_until_it_speaks(pair, alarm):
    ch, theirs = pair

    def slow():
        time.sleep(0.3)
        theirs.send(hs.encode(hs.Ready()))
    pid = _fork(slow)
    watched = hs.watch(pid)
    try:
        assert ch.recv(watch=watched) == hs.Ready()
    finally:
        os.close(watched)
        os.waitpid(pid, 0)


def test_eof_and_send_to_a_closed_peer_are_peer_gone(pair, alarm):
    ch, theirs = pair
    theirs.close()
    with pytest.raises(hs.PeerGone):
        ch.recv()
    with pytest.raises(hs.PeerGone):
        ch.send(hs.Ok())


def test_expect_ok(pair):
    ch, theirs = pair
    theirs.send(hs.encode(hs.Ok()))
    ch.expect_ok()
    theirs.send(hs.encode(hs.Error("no id maps")))
    with pytest.raises(ContainerError, match="^no id maps$"):
        ch.expect_ok()
    theirs.send(hs.encode(hs.Ready()))
    with pytest.raises(ContainerError, match="unexpected handshake message"):
        ch.expect_ok()


def test_check_ends_a_wait_on_a_live_but_silent_peer(pair, alarm):
    """A live init that can never answer (stuck in the kernel at its memory limit, say): the
    runtime's CHECK runs while the peer is silent, and what it raises ends the wait."""
    ch, _theirs = pair
    pid = _fork(lambda: time.sleep(30))
    watched = hs.watch(pid)
    calls = []

    def check():
        calls.append(1)
        if len(calls) == 3:
            raise ContainerError("stuck")
    try:
        with pytest.raises(ContainerError, match="^stuck$"):
            ch.recv(watch=watched, check=check, interval=0.05)
        assert len(calls) == 3
    finally:
        os.close(watched)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
