"""One pipeline over every row of a table: ``klingflow run PIPELINE --batch rows.csv``.

Each row of the table (CSV, Parquet, JSON lines, a DataFrame or a list of records) sets the
pipeline's inputs by column and becomes one run; the rows share one cache, one concurrency cap
and one budget, and a failed row never stops the others. What each row came to is one row of the
result table (:class:`RowOutcome`), kept as Parquet (and CSV next to the outputs).

* :mod:`._sheet`: reading the table into cells;
* :mod:`._rows`: every row checked against the pipeline, its key (a hash of its resolved inputs);
* :mod:`._result`: the result table, where it is kept, the failed rows of the last batch;
* :mod:`._run`: :func:`arun_batch`, the batch without Prefect, and :class:`BatchHooks`.

Example::

    from klingflow.batch import arun_batch

    batch = asyncio.run(arun_batch("story.yaml", "rows.csv"))
    print(batch.table[["row", "status", "output_path", "cost_usd"]])
"""

from klingflow.batch._result import NOT_STARTED, RowOutcome, batches_root, failed_keys
from klingflow.batch._rows import BatchRow, check_rows, row_key
from klingflow.batch._run import DEFAULT_ROW_CONCURRENCY, BatchHooks, BatchResult, RowCall, arun_batch
from klingflow.batch._sheet import Sheet, SheetSource, read_sheet

__all__ = [
    "DEFAULT_ROW_CONCURRENCY",
    "NOT_STARTED",
    "BatchHooks",
    "BatchResult",
    "BatchRow",
    "RowCall",
    "RowOutcome",
    "Sheet",
    "SheetSource",
    "arun_batch",
    "batches_root",
    "check_rows",
    "failed_keys",
    "read_sheet",
    "row_key",
]
