#!/usr/bin/env python3
"""Runs a command with memory that is both writable and executable denied to it and to its
children (Linux's PR_SET_MDWE, 6.3+): what systemd's MemoryDenyWriteExecute=yes enforces with
seccomp. A library that generates code at run time (a JIT) fails under it.

    scripts/mdwe-run.py vpd run in.mp4 -f faces -o out.mp4
"""
import ctypes
import os
import sys

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1

libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit(f"mdwe-run: prctl(PR_SET_MDWE) failed: {os.strerror(ctypes.get_errno())} (Linux 6.3 or newer needed)")
os.execvp(sys.argv[1], sys.argv[1:])
