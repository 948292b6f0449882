"""The keyword index over chunk text (Search's KEYWORD and HYBRID modes),
kept by the database itself so it never disagrees with the chunks: every
insert and delete of a chunk (a document written, rewritten or deleted, a
collection dropped through ON DELETE CASCADE) changes it in the same
transaction. Existing chunks are indexed here.

SQLite: an external-content FTS5 table keyed by the chunk's rowid (no second
copy of the text), kept by triggers on `chunks`. PostgreSQL: a stored
generated `tsvector` column with a GIN index.

A later migration that rebuilds `chunks` on SQLite (batch_alter_table in
"recreate" mode) drops its triggers with the old table: it must create them
again (SQLITE_TRIGGERS below).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 08:30:00

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Porter stemming over unicode61 words ("deleted" finds "deletes"), accents
# folded; the PostgreSQL side uses the 'english' configuration to match.
SQLITE_TABLE = (
    "CREATE VIRTUAL TABLE chunks_fts USING fts5("
    "text, content='chunks', content_rowid='id', "
    "tokenize='porter unicode61 remove_diacritics 2')"
)

SQLITE_TRIGGERS = (
    "CREATE TRIGGER chunks_fts_insert AFTER INSERT ON chunks BEGIN "
    "INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text); END",
    # An external-content index forgets a row by being told its old text.
    "CREATE TRIGGER chunks_fts_delete AFTER DELETE ON chunks BEGIN "
    "INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text); END",
    # Chunk text is never updated in place today (a rewrite deletes and
    # inserts); this keeps the index right if it ever is. Only an UPDATE that
    # sets `text` fires it, not the outbox's state and lease updates.
    "CREATE TRIGGER chunks_fts_update AFTER UPDATE OF text ON chunks BEGIN "
    "INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text); "
    "INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text); END",
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(SQLITE_TABLE)
        for trigger in SQLITE_TRIGGERS:
            op.execute(trigger)
        # Back-fill: an external-content table reads its rows from `chunks`.
        op.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('rebuild')")
        return
    # The generated column fills itself for the existing rows as it is added.
    op.execute(
        "ALTER TABLE chunks ADD COLUMN text_search tsvector "
        "GENERATED ALWAYS AS (to_tsvector('english'::regconfig, text)) STORED"
    )
    op.execute("CREATE INDEX ix_chunks_text_search ON chunks USING gin (text_search)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in ("chunks_fts_update", "chunks_fts_delete", "chunks_fts_insert"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TABLE IF EXISTS chunks_fts")
        return
    op.execute("DROP INDEX IF EXISTS ix_chunks_text_search")
    op.execute("ALTER TABLE chunks DROP COLUMN IF EXISTS text_search")
