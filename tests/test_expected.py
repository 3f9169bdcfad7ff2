"""hrnas.expected: the multi-seed table reader and the line the task notebooks print."""
import pytest

from hrnas import expected as ex
from hrnas.errors import UserError

HEADER = "task,metric,mean,std,min,max,n,seeds,machine,commit,date\n"
ROWS = ("cityscapes,mIoU,17.5,2.1,14.0,20.3,5,1995 1 2 3 7,AMD EPYC 2 cores,35958db,2026-12-01\n"
        "coco,AP,11.0,4.1,5.3,15.2,4,1995 1 2 7,AMD EPYC 2 cores,35958db,2026-12-01\n")


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "tiny_expected.csv"
    path.write_text(HEADER + ROWS)
    return path


def test_reads_a_row(table):
    row = ex.expected_range("cityscapes", "mIoU", path=table)
    assert (row.mean, row.std, row.min, row.max, row.n) == (17.5, 2.1, 14.0, 20.3, 5)
    assert row.machine == "AMD EPYC 2 cores" and row.seeds == "1995 1 2 3 7" and row.commit == "35958db"
    assert row.contains(14.0) and row.contains(20.3) and not row.contains(20.4)
    assert row.format("%") == "expected at tiny: 17.5 ± 2.1 % (min 14.0, max 20.3, 5 seeds, AMD EPYC 2 cores)"
    assert set(ex.read_expected(table)) == {("cityscapes", "mIoU"), ("coco", "AP")}


def test_missing_file_or_row_says_so_and_invents_nothing(table, tmp_path):
    assert ex.expected_range("cityscapes", "mIoU", path=tmp_path / "none.csv") is None
    assert ex.expected_range("cityscapes", "mAcc", path=table) is None
    line = ex.describe_expected("cityscapes", "mAcc", 26.1, "tiny", unit="%", path=table)
    assert line == "mAcc 26.1 % (this run, one seed); no multi-seed table for this preset yet"
    line = ex.describe_expected("ade20k", "mIoU", 14.9, "tiny", unit="%", path=tmp_path / "none.csv")
    assert line.endswith(ex.NO_TABLE)


def test_only_tiny_has_a_range(table):
    inside = ex.describe_expected("cityscapes", "mIoU", 17.46, "tiny", unit="%", path=table)
    assert inside == ("mIoU 17.5 % (this run, one seed); expected at tiny: 17.5 ± 2.1 % (min 14.0, max 20.3, "
                      "5 seeds, AMD EPYC 2 cores); this run is inside the seeds' range")
    outside = ex.describe_expected("coco", "AP", 2.0, "tiny", path=table)
    assert outside.endswith("this run is outside the seeds' range") and "11.0 ± 4.1 (min 5.3" in outside
    assert ex.describe_expected("cityscapes", "mIoU", 4.5, "smoke", path=table).endswith(ex.NO_TABLE)


@pytest.mark.parametrize("text,match", [
    ("task,metric,mean,std,min,max,n,seeds,machine,commit\n", "columns must be exactly"),
    (HEADER + "cityscapes,mIoU,x,2.1,14.0,20.3,5,s,m,c,d\n", "line 2: column mean = 'x'"),
    (HEADER + "cityscapes,mIoU,17.5,2.1,18.0,20.3,5,s,m,c,d\n", "line 2: needs min <= mean <= max"),
    (HEADER + "cityscapes,mIoU,17.5,2.1,14.0,20.3,0,s,m,c,d\n", "line 2: column n = 0"),
    (HEADER + ROWS + "coco,AP,11.0,4.1,5.3,15.2,4,s,m,c,d\n", "line 4: a second row for task 'coco'"),
])
def test_bad_tables_name_the_file_and_line(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=match) as err:
        ex.read_expected(path)
    assert str(path) in str(err.value)


def test_the_default_table_lives_in_the_configs():
    assert ex.EXPECTED_FILE.parent.name == "configs" and ex.EXPECTED_FILE.name == "tiny_expected.csv"
    assert ex.COLUMNS == tuple(HEADER.strip().split(","))
