"""How CSV text becomes records: stray quotes, bare CRs, a BOM before a quoted header, the header
rename rule and blank lines. Each test imports a tiny hand-written file and checks the exact
counts, line numbers and rejects (line numbers are physical `\\n` lines: `sed -n Np`)."""

from __future__ import annotations

import orjson
import pytest

from clicklake.platform import landing
from clicklake.platform.importer import ReadError, import_log, mapping_from_dict, readers
from clicklake.platform.storage import Store

T = "2025-06-02T08:00:00Z"
MAP = mapping_from_dict({"time": "ts", "user": "user", "campaign": "campaign",
                         "user_agent": "ua"})


def run(tmp_path, text: bytes, mapping=MAP, name: str = "log.csv"):
    path = tmp_path / name
    path.write_bytes(text)
    store = Store(str(tmp_path / "data"))
    return store, import_log(store, mapping, str(path))


def rejects(store: Store, r) -> list[tuple[int, str, str]]:
    return [(x["line"], x["reason"], x["raw"])
            for x in map(orjson.loads, store.read_bytes(r.rejects_key).splitlines())]


def landed(store: Store) -> list[dict]:
    out = []
    for key in store.list("landing/impressions"):
        out += [orjson.loads(line) for line in landing.read_lines(store, key).lines]
    return sorted(out, key=lambda e: e["user_id"])


# -- stray quotes --------------------------------------------------------------------------------

def test_an_unterminated_quote_rejects_its_line_and_the_rows_after_it_import(tmp_path):
    # Before: the quote ran to the end of the file, one impression with a 3-line user agent.
    text = (f"ts,user,campaign,ua\n{T},u1,c1,\"Mozilla 5.0\n{T},u2,c1,Moz\n{T},u3,c1,Moz\n"
            f"{T},u4,c1,Moz\n").encode()
    store, r = run(tmp_path, text)
    assert (r.rows_read, r.impressions, r.bad_rows) == (4, 3, {"malformed": 1})
    assert rejects(store, r) == [(2, "malformed", f'{T},u1,c1,"Mozilla 5.0')]
    assert [(e["user_id"], e["user_agent"]) for e in landed(store)] == [
        ("u2", "Moz"), ("u3", "Moz"), ("u4", "Moz")]


def test_a_tsv_search_log_with_lone_quotes_loses_only_the_row_that_opens_one(tmp_path):
    # `"best shoes` opens a quoted field that `12"` three lines down would close: the record
    # would have the right width, but the lines inside it are rows of their own.
    m = mapping_from_dict({"time": "ts", "user": "user", "campaign": "campaign",
                           "delimiter": "tab"})
    text = (f"ts\tuser\tcampaign\tquery\n{T}\tu1\tc1\t\"best shoes\n{T}\tu2\tc1\tshoes\n"
            f"{T}\tu3\tc1\tsize 12\"\n{T}\tu4\tc1\tsocks\n").encode()
    store, r = run(tmp_path, text, m, "s.tsv")
    assert (r.rows_read, r.impressions, r.bad_rows) == (4, 3, {"malformed": 1})
    assert rejects(store, r) == [(2, "malformed", f'{T}\tu1\tc1\t"best shoes')]
    assert [e["user_id"] for e in landed(store)] == ["u2", "u3", "u4"]


def test_a_quote_closed_in_the_middle_of_a_field_is_malformed_not_merged(tmp_path):
    store, r = run(tmp_path, f'ts,user,campaign,ua\n{T},u1,c1,"Moz" 5\n{T},u2,c1,x\n'.encode())
    assert (r.rows_read, r.impressions) == (2, 1)
    assert rejects(store, r) == [(2, "malformed", f'{T},u1,c1,"Moz" 5')]


def test_a_quoted_field_open_past_the_line_limit_is_a_stray_quote(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_RECORD_LINES", 3, raising=False)
    # lines 3-5 are text without delimiters (not rows); line 6 closes the quote with 4 fields
    text = f'ts,user,campaign,ua\n{T},u1,c1,"a\nb\nc\nd"\n{T},u2,c1,x\n'.encode()
    store, r = run(tmp_path, text)
    assert [(line, reason) for line, reason, _ in rejects(store, r)] == [
        (2, "malformed"), (3, "malformed"), (4, "malformed"), (5, "malformed")]
    assert (r.rows_read, r.impressions) == (5, 1)


def test_a_real_multi_line_field_is_one_row_and_later_lines_keep_their_numbers(tmp_path):
    text = f'ts,user,campaign,ua\n{T},u1,c1,"Moz\nilla"\n{T},u2,c1,x\nbad,u3,c1,x\n'.encode()
    store, r = run(tmp_path, text)
    assert (r.rows_read, r.impressions) == (3, 2)
    assert [e["user_agent"] for e in landed(store)] == ["Moz\nilla", "x"]
    assert [(line, reason) for line, reason, _ in rejects(store, r)] == [(5, "bad_time")]


# -- line ends -------------------------------------------------------------------------------------

def test_a_bare_cr_in_a_field_makes_its_row_malformed_without_shifting_line_numbers(tmp_path):
    # Before: the CR ended the record, "Moz" was imported and the bad row was called line 5.
    text = f"ts,user,campaign,ua\n{T},u1,c1,Moz\rilla\n{T},u2,c1,x\nbad,u3,c1,x\n".encode()
    store, r = run(tmp_path, text)
    assert (r.rows_read, r.impressions) == (3, 1)
    assert rejects(store, r) == [(2, "malformed", f"{T},u1,c1,Moz\rilla"),
                                 (4, "bad_time", "bad,u3,c1,x")]
    assert [e["user_id"] for e in landed(store)] == ["u2"]


def test_cr_cr_lf_line_ends_count_one_line_each(tmp_path):
    # Before: every \r counted as a line end, doubling the line numbers.
    text = f"ts,user,campaign,ua\r\r\n{T},u1,c1,x\r\r\nbad,u3,c1,x\r\r\n".encode()
    store, r = run(tmp_path, text)
    assert (r.rows_read, r.impressions, r.blank_lines) == (2, 1, 0)
    assert [(line, reason) for line, reason, _ in rejects(store, r)] == [(3, "bad_time")]


# -- the header ------------------------------------------------------------------------------------

def test_a_bom_before_a_quoted_header_is_skipped(tmp_path):
    text = b'\xef\xbb\xbf"ts","user","campaign","ua"\r\n"2025-06-02T08:00:00Z","u1","c1","x"\r\n'
    store, r = run(tmp_path, text)
    assert (r.rows_read, r.impressions, r.skipped_before_header) == (1, 1, 0)
    assert [(e["user_id"], e["user_agent"]) for e in landed(store)] == [("u1", "x")]


def test_a_column_that_ends_with_a_mapped_name_is_not_renamed_to_it(tmp_path):
    # Before: `click_time` was silently read as the impression time `time`.
    m = mapping_from_dict({"time": "time", "user": "user", "campaign": "campaign"})
    with pytest.raises(ReadError, match="no header line naming all of time, user, campaign"):
        run(tmp_path, f"click_time,user,campaign,ts\n{T},u1,c1,{T}\n".encode(), m)


def test_junk_glued_to_the_first_column_name_is_still_cut(tmp_path):
    _, r = run(tmp_path, f"\x00\x01\ufeffts,user,campaign,ua\n{T},u1,c1,x\n".encode())
    assert (r.rows_read, r.impressions) == (1, 1)


# -- blank lines -----------------------------------------------------------------------------------

def test_only_empty_or_white_space_lines_are_blank(tmp_path):
    # Before: all four rows of empty fields were counted as blank lines, nothing rejected.
    text = (f'ts,user,campaign,ua\n{T},u1,c1,x\n,,,\n"","","",""\n,,,,,,,,\n\n  \n'
            '\r\n').encode()
    store, r = run(tmp_path, text)
    assert (r.rows_read, r.impressions, r.blank_lines) == (4, 1, 3)
    assert r.bad_rows == {"malformed": 1, "missing_field": 2}
    assert [(line, reason) for line, reason, _ in rejects(store, r)] == [
        (3, "missing_field"), (4, "missing_field"), (5, "malformed")]


def test_a_tsv_line_of_tabs_is_a_row_of_empty_fields(tmp_path):
    m = mapping_from_dict({"time": "ts", "user": "user", "campaign": "campaign",
                           "delimiter": "tab"})
    _, r = run(tmp_path, f"ts\tuser\tcampaign\n{T}\tu1\tc1\n\t\t\n".encode(), m, "t.tsv")
    assert (r.rows_read, r.blank_lines, r.bad_rows) == (2, 0, {"missing_field": 1})


def test_an_over_long_line_is_malformed_and_not_held_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_RECORD_CHARS", 64, raising=False)
    text = f"ts,user,campaign,ua\n{T},u1,c1,{'x' * 200}\n{T},u2,c1,x\n".encode()
    store, r = run(tmp_path, text)
    assert (r.rows_read, r.impressions, r.bad_rows) == (2, 1, {"malformed": 1})
    assert [(line, reason) for line, reason, _ in rejects(store, r)] == [(2, "malformed")]


def test_a_file_whose_lines_all_end_in_a_bare_cr_is_read_line_by_line(tmp_path):
    # Excel's "CSV (Macintosh)": CR is its only line end, so it ends the lines there
    store, r = run(tmp_path, f"ts,user,campaign,ua\r{T},u1,c1,x\rbad,u2,c1,x\r".encode())
    assert (r.rows_read, r.impressions) == (2, 1)
    assert [(line, reason) for line, reason, _ in rejects(store, r)] == [(3, "bad_time")]


def test_a_header_ending_in_a_bare_cr_amid_lf_lines_gets_a_hint(tmp_path):
    with pytest.raises(ReadError, match="bare CR"):
        run(tmp_path, f"ts,user,campaign,ua\r{T},u1,c1,x\n".encode())


def test_a_bom_before_a_first_column_starting_with_a_symbol_is_cut_alone(tmp_path):
    # The whole run of non-word characters was cut, `@` included: the header was not found.
    m = mapping_from_dict({"time": "@timestamp", "user": "user", "campaign": "campaign"})
    _, r = run(tmp_path, f"\ufeff@timestamp,user,campaign\n{T},u1,c1\n".encode(), m)
    assert (r.rows_read, r.impressions) == (1, 1)


def test_bytes_that_are_not_utf8_reject_a_row_only_in_a_column_it_reads(tmp_path):
    # A Latin-1 note in a column no field reads rejected its row (no column named); in a mapped
    # column it still does, naming the column.
    text = (b"ts,user,campaign,note\n" + f"{T},u1,c1,".encode() + b"caf\xe9\n"
            + f"{T},u\xe92,c1,fine\n".encode("latin-1") + f"{T},u3,c1,ok\n".encode())
    store, r = run(tmp_path, text, mapping_from_dict(
        {"time": "ts", "user": "user", "campaign": "campaign"}))
    assert (r.rows_read, r.impressions, r.bad_rows) == (3, 2, {"malformed": 1})
    assert [(x["line"], x["reason"], x["detail"]) for x in r.first_rejects] == [
        (3, "malformed", "user: invalid UTF-8 bytes")]
    assert [e["user_id"] for e in landed(store)] == ["u1", "u3"]
