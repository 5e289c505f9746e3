"""The terminal: log lines print above the progress bar, an idle run says so, no link to a vanishing server."""

from __future__ import annotations

import logging

from flows.prefect_api import _hide_run_links
from flows.progress import progress_bar


def test_an_idle_run_prints_one_line_instead_of_an_empty_bar(capsys):
    with progress_bar(0, "slide", enabled=True, already_done=2) as bar:
        bar.update(0)
    assert capsys.readouterr().err == "nothing to do: 2 slides already complete\n"


def test_log_lines_go_above_the_bar_not_through_it(capsys):
    logger = logging.getLogger("test_terminal")
    handler = logging.StreamHandler()  # stderr, like Prefect's console handler on the root logger
    logging.root.addHandler(handler)
    try:
        with progress_bar(2, "slide", enabled=True) as bar:
            logger.warning("first slide done")
            bar.update(1)
    finally:
        logging.root.removeHandler(handler)
    err = capsys.readouterr().err
    # tqdm.write clears the bar's line first, so the message starts a line of its own
    assert "\rfirst slide done\n" in err or "\nfirst slide done\n" in err or err.startswith("first slide done\n")


def test_run_links_to_the_temporary_server_are_dropped():
    _hide_run_links()
    logger = logging.getLogger("prefect.flow_runs")

    def kept(message: str) -> bool:
        record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, message, (), None)
        return logger.filter(record)

    assert not kept("View at http://127.0.0.1:8123/runs/flow-run/1")
    assert kept("Beginning flow run 'lime-bobcat' for flow 'tile-tcga'")


def test_a_local_clusters_dashboard_link_is_dropped_an_existing_clusters_kept(monkeypatch):
    from flows.runners import make_task_runner

    logger = logging.getLogger("prefect.task_runner.dask")
    monkeypatch.setattr(logger, "filters", [])  # as in a fresh command: one run, one kind of cluster
    line = "The Dask dashboard is available at http://127.0.0.1:40123/status"

    def kept() -> bool:
        return bool(logger.filter(logger.makeRecord(logger.name, logging.INFO, __file__, 0, line, (), None)))

    make_task_runner(1, "tcp://127.0.0.1:8786")  # an existing cluster may have a dashboard: its link stays
    assert kept()
    make_task_runner(2, None)  # a local cluster has none (not started here: the runner starts it on entry)
    assert not kept()
    assert logger.filter(logger.makeRecord(logger.name, logging.INFO, __file__, 0, "Connecting to ...", (), None))
