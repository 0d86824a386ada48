"""The request the bridge sends upstream for a delivery, rebuilt from its stored row for the
operator's eyes (``GET /admin/deliveries/{id}``): the same path and body builders the worker
uses, so what is shown is what goes out. Credentials are never part of it."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import orjson

from app.admin.schemas import UpstreamRequest
from app.clevertap.bodies import upload_record_for
from app.clevertap.consent import consent_record, endpoint_of
from app.mailmodo.bodies import SyncPlan, add_to_list_body
from app.mailmodo.client import PATHS, MailmodoClient
from app.mailmojo.client import segment as mailmojo_segment
from app.outbox.models import Operation, Upstream

_MAILMODO_KEY = "header mmApiKey: the configured Mailmodo API key (not shown)."
_CLEVERTAP_KEYS = (
    "headers X-CleverTap-Account-Id and X-CleverTap-Passcode (not shown). Records go up in "
    "batches of up to 1000, so the real body holds other people's events too."
)


def upstream_request(row: Any) -> UpstreamRequest | None:
    """None when the stored row cannot be read back (its reason then says why it failed)."""
    try:
        operation = Operation(row.operation)
        if operation is Operation.EVENT_UPLOAD:
            record = upload_record_for(row.payload, clevertap_id=row.clevertap_id, email=row.email)
            return UpstreamRequest(
                upstream=Upstream.CLEVERTAP.value,
                method="POST",
                path="/1/upload",
                body={"d": [record]} if record is not None else None,
                note=_CLEVERTAP_KEYS
                if record is not None
                else "No CleverTap ID nor email yet: nothing can be sent. " + _CLEVERTAP_KEYS,
            )
        if operation in (Operation.CONSENT_PROFILE, Operation.CONSENT_SUBSCRIBE):
            record = consent_record(
                operation.value, row.payload, clevertap_id=row.clevertap_id, email=row.email
            )
            return UpstreamRequest(
                upstream=Upstream.CLEVERTAP.value,
                method="POST",
                path=endpoint_of(operation.value),
                body={"d": [record]} if record is not None else None,
                note=_CLEVERTAP_KEYS
                if record is not None
                else "No CleverTap ID nor email: nothing can be sent. " + _CLEVERTAP_KEYS,
            )
        if operation is Operation.CONTACT_STATUS:
            return UpstreamRequest(
                upstream=Upstream.MAILMODO.value,
                method="GET",
                path=f"/api/v1/getContactDetails?{urlencode({'email': row.email or ''})}",
                body=None,
                note="A status read: what Mailmodo holds for the contact (subscription state). "
                + _MAILMODO_KEY,
            )
        if operation is Operation.MAILMOJO_SYNC:
            return UpstreamRequest(
                upstream=Upstream.MAILMOJO.value,
                method="POST",
                path=f"/v1/lists/{mailmojo_segment(row.target or '')}/subscribers/",
                body=orjson.loads(row.payload),
                note="The stored plan, not yet the body: at send time the bridge reads the "
                "contact, then subscribes it to the list (this path) or updates the contact it "
                "found, by the contact-sync rules. Header Authorization: Bearer (not shown).",
            )
        if operation is Operation.LIST_SYNC:
            plan = SyncPlan.from_json(row.payload)
            return UpstreamRequest(
                upstream=Upstream.MAILMODO.value,
                method="POST",
                path=PATHS[operation],
                body=add_to_list_body(plan, {}),
                note="Shown for a contact with no properties yet: at send time the bridge "
                "first reads the contact and only fills properties that are blank there. "
                + _MAILMODO_KEY,
            )
        return UpstreamRequest(
            upstream=Upstream.MAILMODO.value,
            method="POST",
            path=PATHS[operation].format(target=MailmodoClient.path_segment(row.target or "")),
            body=orjson.loads(row.payload),
            note=_MAILMODO_KEY,
        )
    except (ValueError, KeyError, TypeError):
        return None
