"""The importer: external interactions -> canonical events the pipeline's ingest accepts."""

from __future__ import annotations

from datetime import date

import duckdb
import pandas as pd
import pytest

from cohort_pipeline.storage.events import load_window
from cohort_pipeline.tools.cli import main
from cohort_pipeline.tools.importer import ImportInputError, import_interactions, parse_mapping

RATINGS = """userId,movieId,rating,timestamp
1,10,4.0,964982703
1,12,5.0,964983000
1,11,4.5,964999000
1,11,2.0,964982931
2,10,3.5,1700000000
2,99,4.0,1700000100
,10,4.0,1700000200
3,10,abc,1700000300
3,11,4.0,not a time
"""
ITEMS = "movieId,genre\n10,drama\n11,comedy\n12,drama\n13,\n"
MAP = "user_id=userId,item_id=movieId,event_time=timestamp,rating=rating"
ITEM_MAP = {"item_id": "movieId", "category": "genre"}


@pytest.fixture
def files(tmp_path):
    (tmp_path / "ratings.csv").write_text(RATINGS)
    (tmp_path / "items.csv").write_text(ITEMS)
    return tmp_path


def events(data_dir) -> pd.DataFrame:
    return duckdb.sql(f"SELECT * FROM '{data_dir}/events/*.parquet' ORDER BY event_time").df()


def test_ratings_become_canonical_events_and_every_row_is_accounted_for(files):
    out = files / "data"
    summary = import_interactions(
        files / "ratings.csv",
        parse_mapping(MAP),
        files / "items.csv",
        out,
        item_map=ITEM_MAP,
        min_rating=3.0,
    )
    assert summary.rejected == {
        "missing user_id": 1,
        "item_id not in the items file": 1,
        "missing or unreadable event_time": 1,
        "rating is not a number": 1,
        "rating below --min-rating": 1,
    }
    assert summary.rows_read == 9 == summary.rows_written + sum(summary.rejected.values())
    assert (summary.first_date, summary.last_date) == (date(2000, 7, 30), date(2023, 11, 14))
    assert sorted(p.name for p in (out / "events").iterdir()) == [
        "events-2000-07-30.parquet",
        "events-2023-11-14.parquet",
    ]
    got = events(out)
    assert got["event_time"].iloc[0] == pd.Timestamp(964982703, unit="s", tz="UTC")
    assert set(got["event_type"]) == {"click"} and set(got["device_type"]) == {"other"}
    # Sessions: user 1's first two ratings are 297 s apart, the third hours later.
    sessions = got[got["user_id"] == "1"]["session_id"].tolist()
    assert sessions[0] == sessions[1] != sessions[2]
    assert got["session_duration_s"].iloc[0] == 297.0
    catalog = pd.read_csv(out / "catalog.csv", dtype=str)
    assert catalog.to_dict("list") == {
        "item_id": ["10", "11", "12"],
        "category": ["drama", "comedy", "drama"],
    }


def test_the_pipeline_ingest_accepts_every_imported_row(files):
    out = files / "data"
    summary = import_interactions(
        files / "ratings.csv", parse_mapping(MAP), files / "items.csv", out, item_map=ITEM_MAP
    )
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        f"CREATE TABLE catalog AS SELECT * FROM read_csv('{out}/catalog.csv', all_varchar = true)"
    )
    con.execute("CREATE TABLE none_out (user_id VARCHAR)")
    result = load_window(
        con, out / "events", "catalog", "none_out", date(2000, 1, 1), date(2024, 1, 1)
    )
    assert result.report["quarantined"].sum() == 0
    assert result.report["accepted"].sum() == summary.rows_written == 6  # low ratings kept


def test_clicks_in_parquet_with_millisecond_times_and_event_names(tmp_path):
    clicks = pd.DataFrame(
        {
            "visitor": ["a", "a", "a", "b"],
            "item": ["x", "x", "y", "y"],
            "ts": [1_433_221_332_117, 1_433_221_400_000, 1_433_224_000_000, 1_433_221_332_117],
            "event": ["view", "addtocart", "transaction", "wishlist"],
            "sid": ["s1", "s1", "s1", "s9"],
        }
    )
    clicks.to_parquet(tmp_path / "clicks.parquet")
    pd.DataFrame({"item_id": ["x", "y"], "category": ["c1", "c2"]}).to_parquet(
        tmp_path / "items.parquet"
    )
    mapping = parse_mapping(
        "user_id=visitor,item_id=item,event_time=ts,event_type=event,session_id=sid"
    )
    summary = import_interactions(
        tmp_path / "clicks.parquet", mapping, tmp_path / "items.parquet", tmp_path / "d"
    )
    assert summary.rejected == {"unknown event_type": 1}
    got = events(tmp_path / "d")
    assert got["event_type"].tolist() == ["view", "add_to_cart", "purchase"]
    assert got["event_time"].iloc[0] == pd.Timestamp(1_433_221_332_117, unit="ms", tz="UTC")
    assert set(got["session_id"]) == {"s1"}
    assert got["session_duration_s"].iloc[0] == pytest.approx(2667.883)


def test_iso_timestamps_and_devices(tmp_path):
    (tmp_path / "log.csv").write_text(
        "u,i,t,dev\nu1,x,2024-03-01T10:00:00Z,Mobile\nu1,x,2024-03-01 12:00:00+02:00,toaster\n"
    )
    (tmp_path / "items.csv").write_text("item_id,category\nx,c\n")
    mapping = parse_mapping("user_id=u,item_id=i,event_time=t,device_type=dev")
    import_interactions(
        tmp_path / "log.csv", mapping, tmp_path / "items.csv", tmp_path / "d", event_type="purchase"
    )
    got = events(tmp_path / "d")
    assert got["event_time"].tolist() == [pd.Timestamp("2024-03-01 10:00", tz="UTC")] * 2
    assert got["device_type"].tolist() == ["mobile", "other"]
    assert set(got["event_type"]) == {"purchase"}


def test_errors_name_what_is_wrong(files):
    with pytest.raises(ImportInputError, match="event_time"):
        parse_mapping("user_id=a,item_id=b")
    with pytest.raises(ImportInputError, match="'colour' is not one of"):
        parse_mapping("user_id=a,item_id=b,event_time=c,colour=d")
    with pytest.raises(ImportInputError, match="no column 'nope' \\(mapped to item_id\\)"):
        import_interactions(
            files / "ratings.csv",
            parse_mapping("user_id=userId,item_id=nope,event_time=timestamp"),
            files / "items.csv",
            files / "d",
            item_map=ITEM_MAP,
        )
    import_interactions(
        files / "ratings.csv",
        parse_mapping(MAP),
        files / "items.csv",
        files / "d",
        item_map=ITEM_MAP,
    )
    with pytest.raises(ImportInputError, match="--overwrite"):
        import_interactions(
            files / "ratings.csv",
            parse_mapping(MAP),
            files / "items.csv",
            files / "d",
            item_map=ITEM_MAP,
        )


def test_cli_import_reports_rejections(files, capsys):
    argv = [
        "--data-dir",
        str(files / "d"),
        "import",
        str(files / "ratings.csv"),
        "--map",
        MAP,
        "--items",
        str(files / "items.csv"),
        "--item-map",
        "item_id=movieId,category=genre",
        "--min-rating",
        "3",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert (
        "read 9 rows; wrote 4 events" in out
        and "rejected 1 row(s): rating below --min-rating" in out
    )
    assert main(argv) == 2  # files exist now: refused without --overwrite
    assert "--overwrite" in capsys.readouterr().err
