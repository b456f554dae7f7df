"""
End-to-end tests of issue 13's retries: a real C{twistd gearmand} process
with C{--retry-failed} and a short C{--retry-backoff}, and the real worker
libraries as they fail:

 - libgearman (C{gearman -w} from Debian's gearman-tools): a command that
   exits non-zero makes it answer C{WORK_FAIL}; a worker that dies in the
   middle of a job (as C{GEARMAN_ERROR} closes the connection) is a lost
   worker, counted by C{--job-retries};
 - Perl's Gearman::Worker: a function that dies sends C{WORK_EXCEPTION}
   (the error frozen with Storable) and then C{WORK_FAIL};
 - Python's C{gear}: C{job.sendWorkFail()} sends C{WORK_FAIL};

and a C{kill -9} of a server with an SQLite store between two attempts.

Every wait polls with a deadline; each test class skips, saying why, when
its worker library is not installed.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import sys
import threading
import time
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from txgearmand.test import _process
from txgearmand.test._process import request, run
from txgearmand.test.test_interop import ServerMixin, status, wait_until
from txgearmand.wire import PacketType as P
from txgearmand.wire import encode_request

try:
    import gear
except ImportError:  # pragma: no cover
    gear = None

#: A short back-off: 0.1 to 0.2 s before the first retry, 0.2 to 0.4 s
#: before the second, then 0.25 to 0.5 s.
BACKOFF = (0.2, 0.5)

#: The server's line for a failed attempt that will be tried again.
_ATTEMPT_FAILED = re.compile(
    r"Job (?P<handle>\S+) \((?P<function>[^)]*)\) attempt (?P<attempt>\d+) of (?P<of>\d+)"
    r" failed \((?P<reason>.*?)\); tried again in (?P<delay>[0-9.]+) s",
    re.DOTALL,
)

#: The server's line for a job that failed its last allowed attempt.
_ENDED = re.compile(
    r"Job (?P<handle>\S+) \((?P<function>[^)]*)\) kept in the failed list: unique \S*,"
    r" (?P<attempts>\d+) failed attempts"
)


def failed_list(port: int) -> list[list[str]]:
    """
    The server's failed list (admin C{show failed}): handle, function,
    unique, attempts, first and last failure, reason, per job.
    """
    lines = _process.admin(port, b"show failed").decode().splitlines()
    assert lines[-1] == ".", lines
    return [line.split("\t") for line in lines[:-1]]


#: A command for C{gearman -w}: it records each run (a time stamp) in a
#: file, fails (exits 1) its first C{FAILS} runs, then succeeds and records
#: that in C{RUNS.done}.
_FLAKY = r"""
import sys, time
runs, fails = sys.argv[1], int(sys.argv[2])
stamp = time.time()
payload = sys.stdin.read()
with open(runs, "a") as f:
    f.write(f"{stamp:.6f} {payload}\n")
with open(runs) as f:
    n = len(f.read().splitlines())
if n <= fails:
    sys.exit(1)
with open(runs + ".done", "a") as f:
    f.write(f"{n}\n")
print("done")
"""

_PERL_WORKER = r"""
use strict; use warnings;
use Gearman::Worker;
my ($port, $runs) = @ARGV;
sub record { open(my $fh, ">>", $runs) or die; print $fh "$_[0]\n"; close $fh; }
my $w = Gearman::Worker->new(job_servers => ["127.0.0.1:$port"]);
$w->register_function(boom => sub { record("boom " . $_[0]->arg); die "boom\n" });
$w->register_function(fine => sub { record("fine " . $_[0]->arg); "fine" });
$w->work(stop_if => sub { 0 });
"""


def backoff_bounds(
    attempt: int, first: float = BACKOFF[0], cap: float = BACKOFF[1]
) -> tuple[float, float]:
    """
    The least and the most delay before the retry that follows failed
    attempt number C{attempt} (see C{JobFlow.backoff}): half, and all, of
    C{first} doubled per earlier failure, at most C{cap}.
    """
    full = min(cap, first * 2.0 ** (attempt - 1))
    return full / 2, full


class _RetryProcessMixin(ServerMixin):
    """
    Reading the server's log, and checking the delays between attempts.
    """

    def log_since(self, offset: int = 0) -> str:
        """
        What the server logged, from a character offset on.
        """
        return self.server.log()[offset:]

    def wait_log(
        self, pattern: re.Pattern[str], count: int = 1, offset: int = 0, timeout: float = 15.0
    ) -> list[re.Match[str]]:
        """
        Wait until the server's log (from C{offset}) has C{count} matches of
        C{pattern}; all of them.
        """
        wait_until(
            lambda: len(list(pattern.finditer(self.log_since(offset)))) >= count,
            timeout=timeout,
            what=f"{count} log line(s) matching {pattern.pattern!r}",
        )
        return list(pattern.finditer(self.log_since(offset)))

    def job_gone(self, function: bytes) -> bool:
        """
        Whether the server holds no job of C{function} any more (queued,
        running or waiting for its retry).
        """
        return status(self.port).get(function, (0, 0, 0))[0] == 0

    def check_delays(self, stamps: list[float], failed: list[re.Match[str]]) -> None:
        """
        The time between two attempts (the worker's own time stamps) is at
        least the delay the server drew, and that delay is within the
        back-off's bounds; no upper bound tighter than a few seconds.
        """
        assert isinstance(self, SynchronousTestCase)
        self.assertEqual(len(stamps), len(failed) + 1)
        for n, match in enumerate(failed, start=1):
            delay = float(match["delay"])
            low, high = backoff_bounds(n)
            # The log shows the delay to the millisecond.
            self.assertTrue(low - 0.001 <= delay <= high + 0.001, (n, delay, low, high))
            gap = stamps[n] - stamps[n - 1]
            self.assertGreaterEqual(gap, delay - 0.001, (n, stamps))
            self.assertGreaterEqual(gap, low - 0.001, (n, stamps))
            self.assertLess(gap, delay + 5.0, (n, stamps))


def _need_gearman_tools() -> None:
    if shutil.which("gearman") is None:
        raise SkipTest("gearman is not installed (Debian package gearman-tools)")


def _gearman(port: int, *args: str) -> list[str]:
    return ["gearman", "-h", "127.0.0.1", "-p", str(port), *args]


class LibgearmanRetryTests(_RetryProcessMixin, SynchronousTestCase):
    """
    libgearman's worker, C{gearman -w -f FUNC -- COMMAND}: a command that
    exits non-zero makes it answer C{WORK_FAIL} (the server logs
    "failed on ... (WORK_FAIL)"), which C{--retry-failed} retries; a worker
    that dies holding a job is a lost worker, counted by C{--job-retries}.
    """

    def setUp(self) -> None:
        _need_gearman_tools()

    def test_fails_twice_then_succeeds(self) -> None:
        """
        With C{--retry-failed 3}, a background job whose worker fails it
        twice and then succeeds is run three times, completes once, and
        each retry comes after at least its back-off delay.
        """
        self.start_server(
            "--retry-failed=3", f"--retry-backoff={BACKOFF[0]},{BACKOFF[1]}", "--queue=memory"
        )
        script = self.workdir / "flaky.py"
        script.write_text(_FLAKY)
        runs = self.workdir / "runs.txt"
        done = self.workdir / "runs.txt.done"
        worker = [sys.executable, str(script), str(runs), "2"]
        self.spawn(_gearman(self.port, "-w", "-f", "flaky", "--", *worker), name="worker")
        wait_until(lambda: status(self.port).get(b"flaky", (0, 0, 0))[2] >= 1, what="the worker")
        run(_gearman(self.port, "-b", "-f", "flaky", "payload"), timeout=30)

        wait_until(done.exists, what="the successful run")
        wait_until(lambda: self.job_gone(b"flaky"), what="the job to end")
        lines = runs.read_text().splitlines()
        self.assertEqual([line.split(" ", 1)[1] for line in lines], ["payload"] * 3)
        self.assertEqual(done.read_text(), "3\n")
        log = self.log_since()
        self.assertEqual(log.count("(flaky) failed on "), 2, log)
        self.assertEqual(log.count("(WORK_FAIL)"), 2, log)
        failed = list(_ATTEMPT_FAILED.finditer(log))
        self.assertEqual(
            [(m["attempt"], m["of"], m["reason"]) for m in failed],
            [("1", "4", "failed"), ("2", "4", "failed")],
        )
        self.assertEqual(len({m["handle"] for m in failed}), 1)
        self.assertNotIn("ended after", log)
        self.check_delays([float(line.split(" ", 1)[0]) for line in lines], failed)

    def test_lost_worker_counts_against_job_retries(self) -> None:
        """
        A libgearman worker that dies in the middle of a job (its
        connection closes, as C{GEARMAN_ERROR} closes it) is a lost
        worker: with C{--job-retries 2 --retry-failed 5} the job is tried
        exactly twice, as C{--job-retries} says, and then ends; the retry
        policy of failed jobs is not involved.
        """
        self.start_server(
            "--job-retries=2",
            "--retry-failed=5",
            f"--retry-backoff={BACKOFF[0]},{BACKOFF[1]}",
            "--queue=memory",
        )
        runs = self.workdir / "runs.txt"
        # gearman -w runs the command as its child: $PPID is the worker,
        # killed (SIGKILL) while it holds the job, unless the payload is
        # "sentinel".
        command = [
            "sh",
            "-c",
            f'p=$(cat); echo "$p" >> {runs}; [ "$p" = sentinel ] || kill -9 $PPID',
        ]
        run(_gearman(self.port, "-b", "-f", "dies", "doomed"), timeout=30)
        for n in (1, 2):
            worker = self.spawn(_gearman(self.port, "-w", "-f", "dies", "--", *command), f"w{n}")
            # It dies (SIGKILL) holding the job.
            self.assertEqual(worker.wait(15), -9)
            self.assertEqual(runs.read_text(), "doomed\n" * n)
        (gave_up,) = self.wait_log(re.compile(r"\(dies\) failed: no result in (\d+) of (\d+)"))
        self.assertEqual(gave_up.groups(), ("2", "2"))
        wait_until(lambda: self.job_gone(b"dies"), what="the job to end")

        # A third worker gets only a job submitted after: no third attempt.
        self.spawn(_gearman(self.port, "-w", "-f", "dies", "--", *command), "w3")
        run(_gearman(self.port, "-b", "-f", "dies", "sentinel"), timeout=30)
        wait_until(lambda: runs.read_text().endswith("sentinel\n"), what="the sentinel")
        self.assertEqual(runs.read_text(), "doomed\ndoomed\nsentinel\n")
        log = self.log_since()
        self.assertEqual(log.count("went away holding job"), 2, log)
        self.assertIn("queued again for attempt 2", log)
        self.assertNotIn("queued again for attempt 3", log)
        self.assertIsNone(_ATTEMPT_FAILED.search(log), log)
        # It gave up without a failure answer: in the failed list, lost.
        ((_, function, _, attempts, *_, reason),) = failed_list(self.port)
        self.assertEqual((function, attempts, reason), ("dies", "2", "worker lost"))


class PerlRetryTests(_RetryProcessMixin, SynchronousTestCase):
    """
    Perl's Gearman::Worker: a function that dies sends C{WORK_EXCEPTION}
    (the error, frozen with Storable) and then C{WORK_FAIL}; the server
    counts one failed attempt and drops the C{WORK_FAIL} quietly.
    """

    def setUp(self) -> None:
        if not _process.has_perl_module("Gearman::Worker"):
            raise SkipTest("Perl Gearman::Worker is not installed (libgearman-client-perl)")

    def test_dies_twice(self) -> None:
        """
        With C{--retry-failed 1}, a background job whose Perl worker dies
        is tried exactly twice; the server logs the exception text for
        each attempt, then the job ends, and the Perl worker goes on
        working.
        """
        self.start_server(
            "--retry-failed=1", f"--retry-backoff={BACKOFF[0]},{BACKOFF[1]}", "--queue=memory"
        )
        script = self.workdir / "worker.pl"
        script.write_text(_PERL_WORKER)
        runs = self.workdir / "runs.txt"
        self.spawn(["perl", str(script), str(self.port), str(runs)], "perl-worker")
        wait_until(lambda: status(self.port).get(b"boom", (0, 0, 0))[2] == 1, what="the worker")
        ((ptype, handle),) = request(
            self.port, encode_request(P.SUBMIT_JOB_BG, b"boom", b"", b"x"), 1
        )
        self.assertEqual(ptype, P.JOB_CREATED)

        (ended,) = self.wait_log(_ENDED)
        self.assertEqual((ended["handle"], ended["attempts"]), (handle.decode(), "2"))
        # Perl's frozen error is unwrapped: the text alone, on one line.
        ((listed, _, _, attempts, *_, reason),) = failed_list(self.port)
        self.assertEqual((listed, attempts, reason), (handle.decode(), "2", "exception: boom"))
        wait_until(lambda: self.job_gone(b"boom"), what="the job to end")
        # The worker survived the dropped WORK_FAILs: it does more work, and
        # the failed job was not run a third time before it.
        request(self.port, encode_request(P.SUBMIT_JOB_BG, b"fine", b"", b"y"), 1)
        wait_until(lambda: runs.exists() and "fine" in runs.read_text(), what="the next job")
        self.assertEqual(runs.read_text(), "boom x\nboom x\nfine y\n")

        log = self.log_since()
        # The exception is Perl's error frozen with Storable: logged as its
        # text, unwrapped, on one line.
        raised = re.findall(r"\(boom\) raised on \S+: boom$", log, re.MULTILINE)
        self.assertEqual(len(raised), 2, log)
        (failed,) = _ATTEMPT_FAILED.finditer(log)
        self.assertEqual((failed["attempt"], failed["of"]), ("1", "2"))
        self.assertIn("boom", failed["reason"])
        self.assertTrue(failed["reason"].startswith("exception: "), failed["reason"])
        self.assertNotIn("(WORK_FAIL)", log)
        self.assertNotIn("JOB_NOT_FOUND", log)
        self.assertNotIn("Traceback", log)
        self.assertEqual(self.helper_log("perl-worker").count("Job 'boom' died: boom"), 2)


class GearRetryTests(_RetryProcessMixin, SynchronousTestCase):
    """
    Python's C{gear} worker, whose C{job.sendWorkFail()} sends
    C{WORK_FAIL}.
    """

    def setUp(self) -> None:
        if gear is None:
            raise SkipTest("the gear package is not installed (pip install gear)")

    def test_fails_twice_then_completes(self) -> None:
        """
        With C{--retry-failed 2}, a background job that a C{gear} worker
        fails twice and completes the third time completes once, after
        three attempts and the back-off delays.
        """
        self.start_server(
            "--retry-failed=2", f"--retry-backoff={BACKOFF[0]},{BACKOFF[1]}", "--queue=memory"
        )
        worker = gear.Worker("flaky-gear")
        worker.addServer("127.0.0.1", self.port)
        self.addCleanup(worker.shutdown)
        worker.waitForServer(timeout=30)
        worker.registerFunction("gearflaky")
        attempts: list[tuple[float, bytes, bytes]] = []

        def work() -> None:
            for n in range(3):
                job = worker.getJob()
                attempts.append((time.time(), job.handle, job.arguments))
                if n < 2:
                    job.sendWorkFail()
                else:
                    job.sendWorkComplete(b"done")

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        wait_until(
            lambda: status(self.port).get(b"gearflaky", (0, 0, 0))[2] == 1, what="the worker"
        )
        client = gear.Client("flaky-client")
        client.addServer("127.0.0.1", self.port)
        self.addCleanup(client.shutdown)
        client.waitForServer(timeout=30)
        job = gear.Job(b"gearflaky", b"data", unique=b"u-flaky")
        client.submitJob(job, background=True, timeout=30)

        thread.join(15)
        self.assertFalse(thread.is_alive(), attempts)
        wait_until(lambda: self.job_gone(b"gearflaky"), what="the job to end")
        self.assertEqual([(h, a) for _, h, a in attempts], [(job.handle, b"data")] * 3)
        log = self.log_since()
        self.assertEqual(log.count("(gearflaky) failed on "), 2, log)
        failed = list(_ATTEMPT_FAILED.finditer(log))
        self.assertEqual(
            [(m["attempt"], m["of"], m["reason"]) for m in failed],
            [("1", "3", "failed"), ("2", "3", "failed")],
        )
        self.assertNotIn("ended after", log)
        self.check_delays([stamp for stamp, _, _ in attempts], failed)


class KilledBetweenAttemptsTests(_RetryProcessMixin, SynchronousTestCase):
    """
    A server with an SQLite store killed (SIGKILL) while a failed
    background job waits for its retry keeps its attempts: the count goes
    on after the restart.
    """

    def setUp(self) -> None:
        _need_gearman_tools()

    def stored(self, path: Path) -> list[tuple[int, float | None]]:
        """
        The attempts and next run time of each job in the SQLite file
        (read-only; C{[]} while the server holds a lock).
        """
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        except sqlite3.Error:
            return []
        try:
            rows = db.execute("SELECT attempts, when_to_run FROM txgearmand_jobs").fetchall()
        except sqlite3.Error:
            return []
        finally:
            db.close()
        return [(int(attempts), when) for attempts, when in rows]

    def test_kill_between_attempts(self) -> None:
        """
        With C{--retry-failed 3} and a long back-off, the server is
        killed after the first failed attempt is stored; restarted on the
        same file (with a short back-off from then on), it runs the job at
        its stored time, logs the next failure as attempt 2 of 4 (not 1),
        and gives up after 4 failed attempts in all, across both lives:
        the job is in the failed list, which a third life (after another
        SIGKILL) still has, and whose admin C{failed retry} runs it again,
        to completion, once.
        """
        store = Path(self.mktemp()).resolve()
        store.mkdir(parents=True)
        path = store / "jobs.sqlite"
        first = self.start_server(
            "--retry-failed=3", "--retry-backoff=5,5", f"--queue=sqlite:{path}"
        )
        script = self.workdir / "flaky.py"
        script.write_text(_FLAKY)
        runs = self.workdir / "runs.txt"
        # Fails every run (the first 99); -c 1: the first worker stops
        # after one job.
        command = ["--", sys.executable, str(script), str(runs), "99"]
        once = self.spawn(_gearman(self.port, "-w", "-c", "1", "-f", "crashy", *command), "w1")
        wait_until(lambda: status(self.port).get(b"crashy", (0, 0, 0))[2] >= 1, what="worker 1")
        run(_gearman(self.port, "-b", "-f", "crashy", "payload"), timeout=30)

        (failed,) = self.wait_log(_ATTEMPT_FAILED)
        self.assertEqual((failed["attempt"], failed["of"]), ("1", "4"))
        first_run = float(runs.read_text().split()[0])
        wait_until(lambda: [a for a, _ in self.stored(path)] == [1], what="attempt 1 stored")
        ((_, when),) = self.stored(path)
        assert when is not None
        # The next run time is stored: a few seconds after the failure.
        self.assertTrue(first_run + 2.5 - 0.01 <= when <= first_run + 5 + 5, (first_run, when))
        wait_until(lambda: once.poll() is not None, what="worker 1 to stop after one job")
        assert first.process is not None
        first.process.kill()
        first.process.wait(_process.STOP_TIMEOUT)
        self.assertEqual(len(runs.read_text().splitlines()), 1)

        offset = len(first.log())
        argv = [
            "--retry-backoff=0.2,0.5" if arg.startswith("--retry-backoff=") else arg
            for arg in first.argv
        ]
        second = _process.Server(argv, first.port, first.log_path, first.cwd)
        self.addCleanup(second.kill)
        second.start()
        self.server = second
        failing = self.spawn(_gearman(self.port, "-w", "-f", "crashy", *command), "w2")

        (ended,) = self.wait_log(_ENDED, offset=offset)
        self.assertEqual((ended["handle"], ended["attempts"]), (failed["handle"], "4"))
        wait_until(lambda: self.job_gone(b"crashy"), what="the job to end")
        # Kept in the failed list, and in the store (one row) for the next life.
        ((listed, _, _, attempts, *_),) = failed_list(self.port)
        self.assertEqual((listed, attempts), (failed["handle"], "4"))
        wait_until(lambda: len(self.stored(path)) == 1, what="the failed row")

        log = self.log_since(offset)
        after = [(m["attempt"], m["of"], m["handle"]) for m in _ATTEMPT_FAILED.finditer(log)]
        self.assertEqual(after, [("2", "4", failed["handle"]), ("3", "4", failed["handle"])], log)
        stamps = [float(line.split()[0]) for line in runs.read_text().splitlines()]
        self.assertEqual(len(stamps), 4)
        # The second attempt waited for the time stored by the first life.
        self.assertGreaterEqual(stamps[1], when - 0.01)
        self.assertNotIn("Traceback", self.log_since())

        # Killed again: the failed list comes back with the restart, and
        # the admin command runs the job again (a worker that now succeeds:
        # its fifth run), once; then nothing is left, in memory or stored.
        failing.kill()
        failing.wait(10)
        assert second.process is not None
        second.process.kill()
        second.process.wait(_process.STOP_TIMEOUT)
        third = _process.Server(argv, first.port, first.log_path, first.cwd)
        self.addCleanup(third.kill)
        third.start()
        self.server = third
        ((listed, _, _, attempts, *_),) = failed_list(self.port)
        self.assertEqual((listed, attempts), (failed["handle"], "4"))
        fixed = ["--", sys.executable, str(script), str(runs), "4"]
        self.spawn(_gearman(self.port, "-w", "-f", "crashy", *fixed), "w3")
        wait_until(lambda: status(self.port).get(b"crashy", (0, 0, 0))[2] >= 1, what="worker 3")
        self.assertEqual(
            _process.admin(self.port, b"failed retry " + failed["handle"].encode()), b"OK\r\n"
        )
        done = Path(str(runs) + ".done")
        wait_until(done.exists, what="the job run again to complete")
        self.assertEqual(done.read_text(), "5\n")
        wait_until(lambda: self.job_gone(b"crashy"), what="the job to end")
        self.assertEqual(failed_list(self.port), [])
        wait_until(lambda: self.stored(path) == [], what="the store to be empty")
