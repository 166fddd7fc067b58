#!/usr/bin/env python3
"""Socket activation for wsgate's process tests, as systemd does it.

usage: activate.py NAME=HOST:PORT[,nolisten]... -- COMMAND [ARGS...]

Binds one TCP socket per NAME (port 0 picks a free one) and listens on it
(unless `nolisten`), puts them at file descriptors 3, 4, ... in order, sets
LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID (this process's id, which exec
keeps, or $ACTIVATE_LISTEN_PID), prints `activate: NAME=HOST:PORT` for each with the port actually
bound, then execs COMMAND. No unsafe Rust is needed to place a socket at
fd 3 of the child.
"""
import fcntl
import os
import socket
import sys

sep = sys.argv.index("--")
specs, command = sys.argv[1:sep], sys.argv[sep + 1:]
held = []
for spec in specs:
    name, rest = spec.split("=", 1)
    addr, _, flag = rest.partition(",")
    host, port = addr.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(port)))
    if flag != "nolisten":
        s.listen(1024)
    # Out of the way first, so that placing one at 3 + i cannot close another.
    high = fcntl.fcntl(s.fileno(), fcntl.F_DUPFD, 100 + len(held))
    held.append((name, s.getsockname(), high))
    s.close()
for i, (name, (host, port), high) in enumerate(held):
    os.dup2(high, 3 + i, inheritable=True)
    os.close(high)
    print(f"activate: {name}={host}:{port}", flush=True)
os.environ["LISTEN_FDS"] = str(len(held))
os.environ["LISTEN_FDNAMES"] = ":".join(name for name, _, _ in held)
# ACTIVATE_LISTEN_PID names another process: the sockets are not for COMMAND.
os.environ["LISTEN_PID"] = os.environ.pop("ACTIVATE_LISTEN_PID", str(os.getpid()))
os.execvp(command[0], command)
