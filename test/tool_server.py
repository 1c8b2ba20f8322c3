"""A preloaded interpreter that runs this project's command-line tools for the tests, each run in a fork.

Why: a tool process spends ~3.5 s of CPU importing torch, transformers and the torchao that transformers
imports, before its own work, and a fresh clone's suite starts about thirty of them on a 2-core machine,
where the suite is CPU-bound. The server pays for those imports once per test session and forks a child
for each run (the pattern of Rails' Spring and of nailgun).

A run is started through a shim, a real process: `shim_dir / "pop-eval"`, or the shim folder first on
PATH for the docs' shell blocks. The shim (this file run by `python -I`: standard library only, but the
venv's start-up hooks run, so its environment is the one a tool process starts with) sends its
arguments, environment, working directory, umask, ignored signals and standard streams' file
descriptors to the server over a Unix socket. The forked child runs the tool's own console script
(`.venv/bin/<tool>`) as `__main__` with them, and the shim exits as the child did (its code, or its
signal). SIGINT, SIGTERM and SIGHUP sent to the shim go to the child; a shim that dies takes its child
with it.

Where a fork could differ from the process a user starts, the shim runs the real one instead (exec): no
server (`POP_ROS_TOOL_SERVER` unset or not answering), or an environment variable that Python, torch,
transformers or huggingface_hub read at start or import (`IMPORT_TIME_ENV`) differs from the server's.
What a fork still does not reproduce: the process's resource limits, process group and session; the
hash seed and numpy's global random state (the server's, the same in every run); `sys.path[0]` and
`sys.orig_argv`; signals other than the three above; the teardown of modules at exit (see
`_run_child`); output printed while the preloaded modules are imported. So these stay on real
processes: the console-script wrappers and lazy imports (test_cli_help, test_pop_point), pop-eval's
bad-input refusal (one line, nothing printed while importing), Ctrl-C at a command line (test_node_entry,
test_evaluation), SIGKILL and a full disk (test_evaluation), torchrun, and what counts from a process's
start: memory (test_trimming) and pop-bench's time budget (test_tools).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import struct
import sys

SOCKET_ENV = "POP_ROS_TOOL_SERVER"
# Read by Python at start or by torch, transformers, huggingface_hub at import: a run whose value differs from
# the server's would see the server's, so it runs as a real process.
IMPORT_TIME_ENV = re.compile(
    r"PYTHON|HF_|HUGGINGFACE|TRANSFORMERS|TOKENIZERS|SAFETENSORS|TORCH|PYTORCH|ATEN_|OMP_|MKL_|KMP_|OPENBLAS_"
    r"|CUDA|LD_|USE_|LC_|LANG$|LANGUAGE$|TZ$|HOME$|XDG_CACHE_HOME$|MPLBACKEND$|MPLCONFIGDIR$"
)
MAX_MESSAGE = 1 << 20  # a request: argv, environment and working directory as JSON
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# What every tool run imports before its own work (~3.5 s of CPU), and the tiny preset's model code.
PRELOAD = (
    "torch",
    "transformers.modeling_utils",
    "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl",
    "transformers.models.dinov3_vit.modeling_dinov3_vit",
    "cv2",
    "pop_ros.pipeline",
    "pop_ros.models.loading",
    "pop_ros.evaluation.evaluate",
)


# ---- the shim: a real process per run, standard library only ---------------------------------------------
def shim(script: str) -> None:
    """Run the console script `script` with this process's arguments through the server, else as itself."""
    child = None
    pending: list[int] = []  # signals that came before the child was known: they are its too

    def forward(signum, _frame):
        if child is None:
            pending.append(signum)
            return
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    ignored = [signum for signum in FORWARDED_SIGNALS if signal.getsignal(signum) == signal.SIG_IGN]
    for signum in FORWARDED_SIGNALS:
        if signum not in ignored:  # ignored ones stay ignored, here and in the child, as in a real process
            signal.signal(signum, forward)
    reply, connection = _ask_server(script, ignored)
    if reply is None or "pid" not in reply:
        _set_signals_as_at_start(ignored)
        for signum in pending:
            os.kill(os.getpid(), signum)
        os.execv(script, [script, *sys.argv[1:]])
    child = reply["pid"]
    for signum in pending:
        forward(signum, None)
    message = connection.recv(MAX_MESSAGE)
    child = None  # reaped by the server: its pid may be another process's from now on
    if not message:
        print(f"{os.path.basename(script)}: the test tool server ended before the run", file=sys.stderr)
        sys.exit(70)
    code = os.waitstatus_to_exitcode(json.loads(message)["status"])
    if code < 0:  # ended by a signal: so does the shim, as a shell or subprocess would see it
        if -code != signal.SIGKILL:  # the one signal whose handling cannot be set (and needs none)
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


def _set_signals_as_at_start(ignored: list[int]) -> None:
    """The forwarded signals as an interpreter starts with them: ignored ones stay ignored, SIGINT raises
    KeyboardInterrupt, the others take their default action."""
    for signum in FORWARDED_SIGNALS:
        if signum in ignored:
            signal.signal(signum, signal.SIG_IGN)
        else:
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _ask_server(script: str, ignored: list[int]):
    path = os.environ.get(SOCKET_ENV)
    if not path:
        return None, None
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        connection.connect(path)
        request = {
            "script": script,
            "argv": sys.argv[1:],
            "env": dict(os.environ),
            "cwd": os.getcwd(),
            "ignored": ignored,
            "umask": _umask(),
        }
        socket.send_fds(connection, [json.dumps(request).encode()], [0, 1, 2])
        message = connection.recv(MAX_MESSAGE)
    except OSError:
        connection.close()
        return None, None
    return (json.loads(message) if message else None), connection


def write_shims(folder, scripts: dict[str, str], test_dir: str) -> None:
    """One shim per console script (`{name: path of the real script}`) in `folder`: a shell script, so
    that a venv path with spaces or over the kernel's shebang length still works."""
    for name, script in scripts.items():
        code = f"import sys; sys.path.insert(0, {test_dir!r}); from tool_server import shim; shim({script!r})"
        shim_path = os.path.join(folder, name)
        with open(shim_path, "w") as handle:
            handle.write(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -I -c {shlex.quote(code)} "$@"\n')
        os.chmod(shim_path, 0o755)


# ---- the server ------------------------------------------------------------------------------------------
def serve(path: str, session_pid: int) -> None:
    """Preload, answer on the socket `path` until the process `session_pid` (the test session) ends.
    Logs one line per request on stderr (the session's `server.log`)."""
    import gc
    import importlib
    import selectors
    import shutil

    started_with = dict(os.environ)
    for module in PRELOAD:
        importlib.import_module(module)
    # What the imports put in the environment (cv2: LD_LIBRARY_PATH; torch: TORCHINDUCTOR_CACHE_DIR): a
    # real process's imports would put it in its own, so every child gets it.
    added_by_imports = {name: value for name, value in os.environ.items() if started_with.get(name) != value}
    gc.freeze()  # the preloaded objects out of the children's collections: no copy of their pages for that
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    runs: dict[socket.socket, int] = {}  # a shim's connection -> its child
    try:
        while process_exists(session_pid):
            for key, _events in selector.select(timeout=0.1):
                if key.fileobj is listener:
                    connection, _address = listener.accept()
                    child = _start(connection, started_with, added_by_imports, [listener, *runs], selector)
                    if child is not None:
                        runs[connection] = child
                        selector.register(connection, selectors.EVENT_READ)
                else:  # the shim's only other message would be none: it is gone, and its run goes with it
                    _end(key.fileobj, runs, selector, kill=True)
            for connection, child in list(runs.items()):
                done, status = os.waitpid(child, os.WNOHANG)
                if done:
                    try:
                        connection.send(json.dumps({"status": status}).encode())
                    except OSError:  # the shim is gone: nobody waits for the status
                        pass
                    _end(connection, runs, selector, kill=False)
    finally:
        for child in runs.values():
            os.kill(child, signal.SIGKILL)
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)  # the shims and the socket: the session is over


def process_exists(pid: int) -> bool:
    """Whether `pid` is a live process of this user (another user's is a pid reused since)."""
    if pid <= 0:  # 0 and negatives name process groups for os.kill
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _value(name: str, env: dict):
    """`env[name]` as it acts: the ROS wheels' start-up hook builds LD_LIBRARY_PATH from a set, so two
    processes of one environment get its folders in different orders."""
    value = env.get(name)
    return frozenset(value.split(os.pathsep)) if name == "LD_LIBRARY_PATH" and value else value


def _end(connection, runs, selector, kill: bool) -> None:
    child = runs.pop(connection)
    selector.unregister(connection)
    connection.close()
    if kill:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def _start(connection, started_with: dict, added_by_imports: dict, open_sockets: list, selector) -> int | None:
    """Fork a child for the request on `connection`; None when there is no run to watch: the shim was
    told to run the real process (an import-time variable of the request differs from `started_with`,
    the server's own at its start), or it went away, or it sent no request. A shim that fails here
    never fails the server: other workers' runs go on."""
    fds: list[int] = []
    try:
        message, fds, _flags, _address = socket.recv_fds(connection, MAX_MESSAGE, 3)
        _pid, uid, _gid = struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        request = json.loads(message)
        if uid != os.getuid() or len(fds) != 3:  # the folder is this user's own (0700): a second lock
            raise ValueError(f"refused: uid {uid}, {len(fds)} file descriptors")
        reason = _why_not_forked(request["env"], started_with, added_by_imports)
        if reason:
            print(f"exec {request['script']}: {reason}", file=sys.stderr, flush=True)
            connection.send(json.dumps({"exec": reason}).encode())
            raise ValueError(reason)
    except (OSError, ValueError, KeyError, TypeError):
        for fd in fds:
            os.close(fd)
        connection.close()
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        selector.close()
        for open_socket in [*open_sockets, connection]:
            open_socket.close()
        request["env"].update(added_by_imports)
        _run_child(request, fds)  # ends the child (os._exit): it never comes back here
    for fd in fds:
        os.close(fd)
    print(f"fork {child} {request['script']} {request['argv']} in {request['cwd']}", file=sys.stderr, flush=True)
    try:
        connection.send(json.dumps({"pid": child}).encode())
    except OSError:  # the shim went away meanwhile: so does its run
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        connection.close()
        return None
    return child


def _why_not_forked(env: dict, started_with: dict, added_by_imports: dict) -> str:
    """The import-time variables of a request that differ from the server's ('' when none). A caller that
    made the same imports (a pytest worker) passes on what they added: that counts as the same."""
    after_imports = {**started_with, **added_by_imports}
    differing = sorted(
        name
        for name in set(env) | set(started_with)
        if IMPORT_TIME_ENV.match(name)
        and _value(name, env) not in (_value(name, started_with), _value(name, after_imports))
    )
    return f"differs from the server's: {differing}" if differing else ""


def _run_child(request: dict, fds: list[int]) -> None:
    """Become the tool's process (its streams, folder, environment, umask, signals and argv), run its
    console script as `__main__`, and end as its interpreter ends it: the traceback of what it raised, its
    non-daemon threads and threading's exit hooks (`threading._shutdown`), its atexit handlers, Python's
    and C's stdio flushed, its exit code (an uncaught KeyboardInterrupt: killed by SIGINT). What the
    interpreter would do next, tearing down every module, is skipped: in a fork that copies the whole
    preloaded heap page by page (~1.3 s of CPU, more than most runs); a file object a tool left open and
    unflushed would lose its tail here, where its own process flushes it on teardown."""
    import atexit
    import ctypes
    import runpy
    import threading

    code = 1
    interrupted = False
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.umask(request["umask"])
        os.environ.clear()
        os.environ.update(request["env"])
        _set_signals_as_at_start(request["ignored"])
        sys.argv = [request["script"], *request["argv"]]
        try:
            runpy.run_path(request["script"], run_name="__main__")
            code = 0
        except SystemExit as exit_:
            code = exit_code(exit_.code)
        except BaseException as error:  # noqa: BLE001 - printed as the interpreter prints what ends a program
            sys.excepthook(type(error), error, error.__traceback__)
            interrupted = isinstance(error, KeyboardInterrupt)
        # What Py_FinalizeEx runs before tearing modules down, in its order (CPython's own two functions).
        threading._shutdown()
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        ctypes.CDLL(None).fflush(None)  # C extensions' buffered stdio, which exit() would flush
        if interrupted:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        os._exit(code)


def exit_code(value) -> int:
    """What the interpreter makes of `SystemExit(value)` (a value that is not a number is printed)."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
