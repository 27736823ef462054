"""SearchBlocks on PostgreSQL: its own text search over `blocks.tsv` (pgstore/schema.py).

`queries.search` hands a PostgreSQL connection here. The answer has the same shape and
bounds as the SQLite search: the best of the most recent SEARCH_RANKED_MATCHES matches that pass
the filters, retracted blocks left out before ranking, equal ranks newest first, at most `limit`
hits, each snippet at most SNIPPET_CHARS characters, as many hits as the reply budget takes,
the same SearchHit. What differs is PostgreSQL's: the query is read by `websearch_to_tsquery`
('simple' configuration: words as written, lower-cased, no stemming, no stop words), so
"quoted phrases", `or` and `-word` work, and FTS5's operators (NEAR, prefix*) do not; the rank
is `-ts_rank` (lower is better, as with bm25, but not the same numbers); the snippet is
`ts_headline`'s, with the match in [brackets] as FTS5's.

One statement: the matches newest first (bounded), ranked, the best `limit` kept, and only for
those the snippet (ts_headline re-parses the text: the costly part) and the context's
conversation.
"""

from __future__ import annotations

import sqlite3
from typing import Final

from timelined.api.model import SearchHit
from timelined.errors import BadQuery
from timelined.replies import ReplyBudget
from timelined.state.dbapi import DbConn
from timelined.state.queries import (
    SEARCH_RANKED_MATCHES,
    SNIPPET_CHARS,
    collect_hits,
    search_filters,
)

# A tsvector holds at most 1 MiB: the search vector (pgstore/schema.py's generated column)
# reads a block's first SEARCH_CHARS characters, which stay far below it whatever the text
# (≤ ~5 bytes of tsvector per character, for short distinct words in a 3-byte script); so a
# long block (up to limits.max_block_bytes) is stored, not refused, and words past that point
# are not found on PostgreSQL. The snippet reads the same characters.
SEARCH_CHARS: Final = 100_000

# FTS5's snippet: the match in [brackets], about 12 words around it.
_HEADLINE: Final = "StartSel=[, StopSel=], MaxWords=12, MinWords=4, ShortWord=0, MaxFragments=1"


def search(
    conn: DbConn,
    query: str,
    *,
    conversation_id: str | None = None,
    context_id: str | None = None,
    role: str | None = None,
    limit: int = 20,
    budget: ReplyBudget | None = None,
) -> list[SearchHit]:
    """`queries.search` on PostgreSQL (its docstring says what both promise)."""
    filters, params = search_filters(conversation_id, context_id, role)
    joins = "JOIN contexts c ON c.id = b.context_id " if conversation_id is not None else ""
    where = "".join(f" AND {f}" for f in filters)
    try:
        rows = conn.execute(
            "WITH q AS (SELECT websearch_to_tsquery('simple', ?) AS query), "
            "recent AS ("
            f" SELECT b.seq, b.tsv FROM blocks b {joins}CROSS JOIN q"
            f" WHERE b.tsv @@ q.query{where}"
            "  AND NOT EXISTS (SELECT 1 FROM retractions r WHERE r.block_id = b.id)"
            "  ORDER BY b.seq DESC LIMIT ?), "
            "best AS ("
            " SELECT recent.seq, -ts_rank(recent.tsv, q.query) AS rank FROM recent CROSS JOIN q"
            "  ORDER BY rank, recent.seq DESC LIMIT ?) "
            "SELECT best.seq, best.rank, b.id, b.context_id, c.conversation_id, b.role, "
            f" left(ts_headline('simple', left(b.content, {SEARCH_CHARS:d}), q.query, "
            f"  '{_HEADLINE}'), ?) "
            "FROM best JOIN blocks b ON b.seq = best.seq "
            "JOIN contexts c ON c.id = b.context_id CROSS JOIN q "
            "ORDER BY best.rank, best.seq DESC",
            (query, *params, SEARCH_RANKED_MATCHES, limit, SNIPPET_CHARS + 1),
        ).fetchall()
    except sqlite3.OperationalError as exc:  # pgstore's PgOperationalError is one
        raise BadQuery(query, str(exc)) from exc
    return collect_hits(rows, budget)
