"""CleverTap's /1/upload answers as one outcome per record sent (pure, no HTTP)."""

from __future__ import annotations

from app.clevertap.outcomes import classify_upload, refused_whole_batch
from app.upstream import AttemptOutcome
from tests.answers import resp

# --- CleverTap per-record answers --------------------------------------------------------------

SENT = [{"type": "event", "evtName": f"E{i}", "evtData": {}, "objectId": f"o{i}"} for i in range(3)]


def test_upload_codes_sent_as_text_are_still_permanent() -> None:
    answer = {
        "status": "partial",
        "processed": 2,
        "unprocessed": [{"code": "509", "error": "Skipped record number : 2"}],
    }
    kinds = [o.kind for o in classify_upload(resp(200, answer), SENT)]
    assert kinds == [AttemptOutcome.DELIVERED, AttemptOutcome.FAILED, AttemptOutcome.DELIVERED]


def test_upload_skipped_records_we_cannot_identify_are_resent_not_lost() -> None:
    answer = {"status": "partial", "processed": 2, "unprocessed": [{"code": 555, "error": "?"}]}
    kinds = [o.kind for o in classify_upload(resp(200, answer), SENT)]
    assert kinds == [AttemptOutcome.RETRY] * 3


def test_upload_counts_that_add_up_need_no_identification() -> None:
    answer = {
        "status": "partial",
        "processed": 2,
        "unprocessed": [{"code": 512, "error": "x", "record": SENT[0]}],
    }
    kinds = [o.kind for o in classify_upload(resp(200, answer), SENT)]
    assert kinds == [AttemptOutcome.FAILED, AttemptOutcome.DELIVERED, AttemptOutcome.DELIVERED]


def test_upload_processed_count_short_without_unprocessed_entries_resends() -> None:
    answer = {"status": "partial", "processed": 1, "unprocessed": []}
    kinds = [o.kind for o in classify_upload(resp(200, answer), SENT)]
    assert kinds == [AttemptOutcome.RETRY] * 3


def test_whole_request_refusals_are_bisected_others_are_not() -> None:
    assert refused_whole_batch(resp(400))
    assert refused_whole_batch(resp(413))
    assert not refused_whole_batch(resp(200))
    assert not refused_whole_batch(resp(500))
