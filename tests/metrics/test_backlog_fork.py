"""The supervisor forks workers while its endpoint thread may be asking the
database for the outbox backlog: a fork must wait for that query, or the
worker inherits the driver's locks held by a thread it does not have."""

from __future__ import annotations

from tests.metrics.test_endpoint import run_python


def test_a_fork_waits_for_a_backlog_query_in_progress() -> None:
    # In a fresh interpreter: no gRPC threads of the test process are forked.
    result = run_python(
        """
        import os, threading
        from metadata_service.config import MetadataSettings
        from metadata_service.metrics import OutboxBacklog

        querying, finish, forked = threading.Event(), threading.Event(), threading.Event()

        class Connection:
            def __enter__(self):
                querying.set()
                assert finish.wait(30)
                raise RuntimeError("query ended")
            def __exit__(self, *exc):
                return False

        class Engine:
            def connect(self):
                return Connection()

        backlog = OutboxBacklog(MetadataSettings(database_url="sqlite:///unused.db"), max_age=0)
        backlog._engine = Engine()
        scrape = threading.Thread(target=lambda: list(backlog.collect()))
        scrape.start()
        assert querying.wait(30)

        def fork():
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            forked.set()
            os.waitpid(pid, 0)

        forker = threading.Thread(target=fork)
        forker.start()
        # A negative check: the short wait can only miss a bug, never fail a fix.
        print("forked during the query:", forked.wait(0.5))
        finish.set()
        assert forked.wait(30), "the fork never happened"
        forker.join(30)
        scrape.join(30)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "forked during the query: False" in result.stdout
