"""email <-> CleverTap ID pairs learnt from CleverTap calls, used to key Mailmodo activity."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime


class Identity(Base):
    """The latest CleverTap ID seen for an email (lower-cased); the newest observation wins."""

    __tablename__ = "identities"

    email: Mapped[str] = mapped_column(String(320), primary_key=True)
    clevertap_id: Mapped[str] = mapped_column(String(256))
    source: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
