"""cellsctl's progress line on a terminal while it waits."""

from __future__ import annotations

import io

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cellsd.cli.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class ProgressTests(SynchronousTestCase):
    def test_a_terminal_sees_how_long_it_waited(self) -> None:
        """After half a second on a terminal, the wait and the deadline are
        shown and updated; stop() clears the line."""
        clock, out = Clock(), Terminal()
        progress = Progress(clock, out, "cellsctl ping", 30.0)
        progress.start()
        clock.advance(0.4)
        self.assertEqual(out.getvalue(), "")
        clock.advance(0.1)
        self.assertIn("cellsctl ping: waiting for the cells, 0.5s (deadline 30s)", out.getvalue())
        clock.advance(1.0)
        self.assertIn("1.5s", out.getvalue())
        progress.stop()
        self.assertTrue(out.getvalue().endswith("\r\x1b[K"))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_quick_answers_and_pipes_show_nothing(self) -> None:
        """A quick answer, or output that is not a terminal, gets no line."""
        clock, tty, pipe = Clock(), Terminal(), io.StringIO()
        quick = Progress(clock, tty, "cellsctl tree", 30.0)
        quick.start()
        clock.advance(0.2)
        quick.stop()
        piped = Progress(clock, pipe, "cellsctl tree", 30.0)
        piped.start()
        clock.advance(5)
        piped.stop()
        self.assertEqual((tty.getvalue(), pipe.getvalue()), ("", ""))
        self.assertEqual(clock.getDelayedCalls(), [])
