"""The tests' preloaded tool server (test/tool_server.py): a run through a shim is the run a process of
its own would give (arguments, folder, environment, standard streams, exit code, signals), and where a
fork could differ the shim runs the real process."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from test import tool_server

# A stand-in tool: says what it was given, then does what its first argument asks.
PROBE = """
import json, os, signal, sys, time
what = sys.argv[1]
try:  # from before the first line out: a SIGINT sent once it is read lands inside
    print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "marker": os.environ.get("PROBE_MARKER"),
                      "stdin": sys.stdin.read() if what == "stdin" else None, "pid": os.getpid(),
                      "sigint": repr(signal.getsignal(signal.SIGINT)), "umask": os.umask(0)}), flush=True)
    if what == "wait":
        time.sleep(120)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
if what == "exit":
    sys.exit(int(sys.argv[2]))
if what == "message":
    sys.exit("no good: " + sys.argv[2])
if what == "raise":
    raise ValueError("raised on purpose")
if what == "kill":
    os.kill(os.getpid(), getattr(signal, sys.argv[2]))
if what == "executor":  # a worker thread left waiting: the interpreter's exit hooks end it
    import concurrent.futures
    sys.probe_pool = concurrent.futures.ThreadPoolExecutor(1)  # held to the end, past the script's globals
    sys.probe_pool.submit(time.sleep, 0).result()
"""


@pytest.fixture
def probe(tmp_path, tool_shims):
    """`probe(*argv, **popen_kwargs)` -> the running shim of the stand-in tool; `probe.script` runs it
    as a real process."""
    script = tmp_path / "probe.py"
    script.write_text(f"#!{sys.executable}\n{PROBE}")
    script.chmod(0o755)
    tool_server.write_shims(tmp_path, {"probe": str(script)}, str(pathlib.Path(__file__).parent))

    def start(*argv, env=None, **kwargs):
        return subprocess.Popen(
            [str(tmp_path / "probe"), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env if env is not None else dict(os.environ), **kwargs,
        )  # fmt: skip

    start.script = script
    return start


def said(process: subprocess.Popen) -> dict:
    return json.loads(process.stdout.readline())


def test_a_run_gets_its_arguments_folder_environment_and_stdin(probe, tmp_path):
    process = probe("stdin", "a b", "--flag", cwd=tmp_path, stdin=subprocess.PIPE,
                    env=dict(os.environ, PROBE_MARKER="given"))  # fmt: skip
    stdout, stderr = process.communicate("piped text", timeout=60)
    answer = json.loads(stdout)
    assert process.returncode == 0, stderr
    assert answer["argv"] == ["stdin", "a b", "--flag"] and answer["cwd"] == str(tmp_path)
    assert answer["marker"] == "given" and answer["stdin"] == "piped text"
    assert answer["pid"] != process.pid  # a fork of the server, not the shim's process
    assert answer["sigint"] == repr(signal.default_int_handler)  # Ctrl-C is a KeyboardInterrupt, as in a real tool


@pytest.mark.parametrize(
    "argv, code, on_stderr",
    [
        (["exit", "3"], 3, None),
        (["message", "why"], 1, "no good: why"),
        (["raise"], 1, "ValueError: raised on purpose"),
        (["kill", "SIGKILL"], -signal.SIGKILL, None),
        (["kill", "SIGTERM"], -signal.SIGTERM, None),
    ],
)
def test_exit_codes_and_last_words_are_the_interpreter_s(probe, argv, code, on_stderr):
    served = probe(*argv)
    assert said(served)["pid"] != served.pid  # through the server
    stdout, stderr = served.communicate(timeout=60)
    real = subprocess.run([str(probe.script), *argv], capture_output=True, text=True, timeout=60, check=False)
    assert served.returncode == real.returncode == code
    if on_stderr:
        assert on_stderr in stderr and on_stderr in real.stderr


def test_sigint_to_the_shim_interrupts_the_tool(probe):
    process = probe("wait", preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert said(process)["pid"] != process.pid  # running, through the server
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and stdout.strip() == "interrupted", stderr


def test_a_tool_whose_shim_is_killed_is_killed_with_it(probe):
    process = probe("wait")
    child = said(process)["pid"]
    assert child != process.pid  # through the server
    process.kill()
    process.wait(timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and pathlib.Path(f"/proc/{child}").exists():
        time.sleep(0.05)
    assert not pathlib.Path(f"/proc/{child}").exists(), "the tool outlived its killed shim"


@pytest.mark.parametrize(
    "change",
    [
        {"HF_HOME": "/elsewhere"},  # read by huggingface_hub when imported: the server's imports saw another
        {"OMP_NUM_THREADS": "7"},
        {tool_server.SOCKET_ENV: ""},  # no server
    ],
)
def test_where_a_fork_could_differ_the_tool_runs_as_its_own_process(probe, change):
    process = probe("exit", "0", env=dict(os.environ, **change))
    answer = said(process)
    process.communicate(timeout=60)
    assert process.returncode == 0 and answer["pid"] == process.pid  # the shim's process became the tool


@pytest.mark.slow
def test_pop_point_through_the_server_answers_as_its_own_process(tool_shims, tmp_path):
    """The same command, both ways: the same answer, the same log lines, the same exit code."""
    import cv2

    from pop_ros.paths import SAMPLE_DIR

    cv2.imwrite(str(tmp_path / "scene.png"), cv2.imread(str(SAMPLE_DIR / "scene_0.png")))
    argv = ["--preset", "tiny", "--target", "scene.png", "--query", "handle of the mug", "--support",
            "scene.png:120,88", "--json"]  # fmt: skip
    served, real = (
        subprocess.run([str(tool), *argv], capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False)
        for tool in (tool_shims / "pop-point", pathlib.Path(sys.executable).parent / "pop-point")
    )
    assert served.returncode == real.returncode == 0, served.stderr + real.stderr
    forked = [line for line in (tool_shims / "server.log").read_text().splitlines() if line.startswith("fork ")]
    assert any("pop-point" in line and line.endswith(f" in {tmp_path}") for line in forked), forked
    answers = [json.loads(run.stdout) for run in (served, real)]
    for answer in answers:
        answer.pop("timings_ms"), answer.pop("shared_timings_ms")
    assert answers[0] == answers[1]

    def log_lines(stderr: str) -> list[str]:  # without the durations and tqdm's bars
        return [line.split(" in ")[0] for line in stderr.splitlines() if line.startswith(("INFO", "WARNING", "ERROR"))]

    assert log_lines(served.stderr) == log_lines(real.stderr) and log_lines(real.stderr)


def test_a_signal_the_shim_ignores_is_ignored_by_the_tool_too(probe):
    """A command started with SIGINT ignored (a shell's background job) keeps it ignored, as Python does."""
    process = probe("exit", "0", preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    answer = said(process)
    process.communicate(timeout=60)
    assert answer["sigint"] == repr(signal.SIG_IGN) and answer["pid"] != process.pid


def test_a_run_keeps_the_umask_it_was_started_with(probe):
    process = probe("exit", "0", preexec_fn=lambda: os.umask(0o027))
    answer = said(process)
    process.communicate(timeout=60)
    assert answer["umask"] == 0o027 and answer["pid"] != process.pid


def test_a_thread_pool_left_open_ends_with_the_run_as_in_its_own_process(probe):
    process = probe("executor")
    assert said(process)["pid"] != process.pid
    process.communicate(timeout=60)  # a run that waited for the pool's worker forever would time out here
    assert process.returncode == 0


def test_a_shim_that_goes_away_or_says_nothing_useful_leaves_the_server_serving(probe, tool_shims):
    import socket

    path = str(tool_shims / "server.sock")
    for message in (None, b"not json", b"{}"):
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        connection.connect(path)
        if message is not None:
            connection.send(message)
        connection.close()
    process = probe("exit", "0")
    assert said(process)["pid"] != process.pid  # still forked by the same server
    process.communicate(timeout=60)
    assert process.returncode == 0
