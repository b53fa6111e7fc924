"""What every lab test script shares: numbered checks in TAP's words ("ok N - name"), the
closing line CI reads ("N passed, N failed"), and polling with a deadline."""
import sys
import time

_passed = _failed = 0
_last = time.monotonic()


def _took():
    """The time since the previous check (or the start): where a slow run spent it."""
    global _last
    now = time.monotonic()
    took, _last = now - _last, now
    return f" ({took:.1f} s)" if took >= 1 else ""


def check(name, ok, detail=""):
    """Records one check and prints it; returns `ok`, so a failure can end the script."""
    global _passed, _failed
    if ok:
        _passed += 1
        print(f"ok {_passed + _failed} - {name}{_took()}", flush=True)
    else:
        _failed += 1
        print(f"not ok {_passed + _failed} - {name}{_took()}" + (f"\n    {detail}" if detail else ""), flush=True)
    return ok


def failed():
    return _failed


def summary():
    return f"{_passed} passed, {_failed} failed"


def finish():
    """Prints the closing line and exits 1 if any check failed."""
    print(summary(), flush=True)
    sys.exit(1 if _failed else 0)


def wait(condition, timeout=10.0, interval=0.05):
    """Polls `condition` until it holds or `timeout` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()
