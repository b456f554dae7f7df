"""
Coming from C gearmand: its libsqlite3 queue file, written by Debian's
real C gearmand, is imported by C{--queue sqlite:PATH}, and a real worker
drains every imported job.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from txgearmand.store.sqlite import NotAQueueFile, check_sqlite
from txgearmand.test import _process


def _gearman() -> str:
    path = shutil.which("gearman")
    if path is None:
        raise SkipTest("the gearman command is not installed (apt-get install gearman-tools)")
    return path


class CQueueTests(SynchronousTestCase):
    """
    C gearmand's libsqlite3 queue brought over.
    """

    def c_queue(self, workdir: Path) -> Path:
        """
        A queue file written by the real C gearmand: three background jobs
        (one with a unique id, one high priority) nobody worked on.
        """
        gearman = _gearman()
        db = workdir / "c-queue.db"
        server = _process.c_gearmand(workdir, "-q", "libsqlite3", f"--libsqlite3-db={db}")
        if server is None:
            raise SkipTest("C gearmand is not installed (apt-get install gearman-job-server)")
        self.addCleanup(server.kill)
        try:
            server.start()
        except RuntimeError as e:
            raise SkipTest(f"C gearmand has no libsqlite3 queue here: {e}") from None
        port = str(server.port)
        for args in (
            ["-f", "resize", "-u", "u1", "--", "payload one"],
            ["-f", "resize", "--", "payload two"],
            ["-I", "-f", "other", "--", "high one"],
        ):
            _process.run([gearman, "-h", "127.0.0.1", "-p", port, "-b", *args])
        server.stop()
        rows = sqlite3.connect(str(db)).execute("SELECT count(*) FROM gearman_queue").fetchone()
        self.assertEqual(rows, (3,))
        return db

    def test_import_and_drain(self) -> None:
        """
        Our server, started on C's file, imports its three jobs once (and
        says so), and a real worker gets every one with its payload; a
        restart imports nothing again.
        """
        gearman = _gearman()
        workdir = Path(self.mktemp()).resolve()
        workdir.mkdir(parents=True)
        db = self.c_queue(workdir)
        server = _process.twistd_gearmand(workdir, f"--queue=sqlite:{db}")
        self.addCleanup(server.kill)
        server.start()
        self.assertIn("Imported 3 queued jobs from C gearmand", server.log())
        status = _process.admin(server.port, b"status")
        self.assertIn(b"resize\t2\t0\t0\n", status)
        self.assertIn(b"other\t1\t0\t0\n", status)
        port = str(server.port)
        done = workdir / "done.txt"
        for function in ("resize", "resize", "other"):
            # The worker runs the command with each job's payload on stdin.
            worker = [gearman, "-h", "127.0.0.1", "-p", port, "-w", "-c", "1", "-f", function]
            _process.run([*worker, "--", "sh", "-c", f"cat >> {done}; echo >> {done}"], timeout=30)
        self.assertEqual(
            sorted(done.read_text().splitlines()), ["high one", "payload one", "payload two"]
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if _process.admin(server.port, b"status") in (
                b".\n",
                b"resize\t0\t0\t0\nother\t0\t0\t0\n.\n",
            ):
                break
            time.sleep(0.1)
        server.stop()
        again = _process.twistd_gearmand(workdir, f"--queue=sqlite:{db}")
        again.log_path = workdir / "again.log"
        again.argv = [a.replace("twistd.log", "again.log") for a in again.argv]
        self.addCleanup(again.kill)
        again.start()
        self.assertNotIn("Imported", again.log())
        self.assertEqual(_process.admin(again.port, b"status"), b".\n")

    def test_not_a_queue(self) -> None:
        """
        An SQLite file with neither our jobs nor C's queue is refused,
        saying what it has.
        """
        path = Path(self.mktemp())
        sqlite3.connect(str(path)).execute("CREATE TABLE photos (id INTEGER)").connection.commit()
        with self.assertRaises(NotAQueueFile) as raised:
            check_sqlite(str(path))
        self.assertIn("photos", str(raised.exception))

    def test_not_c_columns(self) -> None:
        """
        A C{gearman_queue} table without C's columns is refused too.
        """
        path = Path(self.mktemp())
        sqlite3.connect(str(path)).execute("CREATE TABLE gearman_queue (x)").connection.commit()
        with self.assertRaises(NotAQueueFile):
            check_sqlite(str(path))
