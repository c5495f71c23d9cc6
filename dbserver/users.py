"""Users: password hashing (scrypt) and the first administrator."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets

from sqlalchemy import func, select

from dbserver.models import User
from services.db import run_in_transaction
from services.settings import Settings, get_settings

_N, _R, _P = 2**14, 8, 1


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        _scheme, n, r, p, salt, digest = stored.split("$")
        actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r),
                                p=int(p), dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, base64.b64decode(digest))


def ensure_first_admin(settings: Settings | None = None) -> str | None:
    """Create the ``admin`` user when there is no user yet. Returns its
    password the one time it is created (also kept, mode 0600, in
    ``DATA_DIR/initial-admin-password``), else None."""
    settings = settings or get_settings()
    password = secrets.token_urlsafe(16)

    def work(session) -> bool:  # noqa: ANN001
        if session.scalar(select(func.count(User.id))):
            return False
        session.add(User(username="admin", password_hash=hash_password(password), is_admin=True))
        return True

    if not run_in_transaction(work, settings):
        return None
    path = settings.data_path / "initial-admin-password"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    os.chmod(path, 0o600)
    return password
