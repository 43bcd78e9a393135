"""Reads a vitalflow lakehouse table the way an analyst would, for the Rust tests.

usage: lake_query.py TABLE SQL...

TABLE is a directory or an s3:// URL (S3 options from VITALFLOW_S3_ENDPOINT). Other local
tables may be queried beside it: VITALFLOW_LAKE_VIEWS="name=DIR,..." makes each a view. The Delta log
(read by the `deltalake` package) gives the table's current files; DuckDB queries them as a
view `t`, with the Hive partition columns (date, type). For S3 tables, DuckDB queries the
`deltalake` reader's Arrow dataset instead (DuckDB's own S3 support is an extension it
downloads). Prints one JSON object: the table version, the row count the `deltalake` reader
itself sees, DuckDB's column types, and the rows of each SQL statement.
"""

import json
import os
import sys

import deltalake
import duckdb


def parquet(dt, files) -> str:
    """DuckDB's read of a table's files, with its Hive partition columns typed."""
    known = {"date": "DATE", "type": "VARCHAR"}
    cols = [c for c in dt.metadata().partition_columns if c in known]
    types = ", ".join(f"'{c}': {known[c]}" for c in cols)
    return f"read_parquet({files!r}, hive_partitioning = true, hive_types = {{{types}}})"


def main() -> None:
    table, queries = sys.argv[1], sys.argv[2:]
    options = None
    endpoint = os.environ.get("VITALFLOW_S3_ENDPOINT")
    if table.startswith("s3://") and endpoint:
        options = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
        }
    dt = deltalake.DeltaTable(table, storage_options=options)
    files = dt.file_uris()
    con = duckdb.connect()
    if files and options:
        dataset = dt.to_pyarrow_dataset()
        con.register("t", dataset)
        types = {r[0]: r[1] for r in con.execute("DESCRIBE t").fetchall()}
    elif files:
        con.execute(f"CREATE VIEW t AS SELECT * FROM {parquet(dt, files)}")
        types = {r[0]: r[1] for r in con.execute("DESCRIBE t").fetchall()}
    else:
        types = {}
    # Other tables as views of their own, for joins (local tables only).
    for view in filter(None, os.environ.get("VITALFLOW_LAKE_VIEWS", "").split(",")):
        name, path = view.split("=", 1)
        odt = deltalake.DeltaTable(path)
        other = odt.file_uris()
        if other:
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM {parquet(odt, other)}")
    out = {
        "version": dt.version(),
        "files": len(files),
        "delta_rows": dt.to_pyarrow_table().num_rows if files else 0,
        "types": types,
        "history": [h.get("operation") for h in dt.history()],
        "results": [],
    }
    for q in queries:
        if not files:
            # A table without data files has no rows (and DuckDB no view to query).
            out["results"].append([])
            continue
        cur = con.execute(q)
        names = [d[0] for d in cur.description]
        out["results"].append([dict(zip(names, row)) for row in cur.fetchall()])
    json.dump(out, sys.stdout, default=str)


if __name__ == "__main__":
    main()
