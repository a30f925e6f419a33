"""The report and fork helpers of the scenario preludes (``db_servers``,
``http_servers``): source run in each scenario's fresh interpreter, where
``os``, ``json``, ``signal``, ``wait_child`` and ``CHILD_ALARM`` are
defined. No imports here: the pytest process stays as it was."""

FORK_HELPERS = """\
def report(result):
    # The scenario's findings, for scenario() to read.
    print("RESULT " + json.dumps(result), flush=True)


def fork(child):
    # Run child() in a forked child; its return value comes back as JSON.
    # A child that must exit through the interpreter's normal shutdown
    # raises SystemExit itself after send().
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        # A child that hangs (waiting for a reply its parent took) must not
        # outlive the scenario: it holds the scenario's output pipes.
        signal.alarm(CHILD_ALARM)
        os.close(read)
        try:
            result = child(lambda value: os.write(write, json.dumps(value).encode()))
        except Exception as exc:
            os.write(write, json.dumps({"error": repr(exc)}).encode())
        else:
            if result is not None:
                os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    return pid, read


def join(pid, read, timeout=None):
    # A child that hangs is ended by its alarm (exit code -14) and reports
    # nothing; the later deadline is only the backstop.
    code = wait_child(pid, timeout=CHILD_ALARM + 10 if timeout is None else timeout)
    return code, read_report(read)


def read_report(read):
    # What the child sent (None if nothing), once it has exited.
    data = b""
    while True:
        chunk = os.read(read, 65536)
        if not chunk:
            break
        data += chunk
    os.close(read)
    return json.loads(data) if data else None
"""
