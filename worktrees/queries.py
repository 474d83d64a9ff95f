"""SQL of the worktrees package.

Lock order, everywhere: the project's advisory lock (only where the repository itself changes:
creating, reaping, accepting), then the session_worktrees row, then pending_changes rows.
JSON goes in as text and comes out as text, so any connection works, with or without codecs.
Statements are composed from the column lists below, never from values.
"""

from __future__ import annotations

# Key space of the per-repository advisory lock: pg_advisory_xact_lock(LOCK_CLASS, project).
LOCK_CLASS = 0x5357_5754  # "SWWT"

LOCK_PROJECT = "SELECT pg_advisory_xact_lock($1::int, ($2::bigint % 2147483647)::int)"

SESSION_REPOSITORY = """
SELECT s.id AS session_id, s.project_id, p.repo_path, p.remote_url, p.default_branch
  FROM sessions s JOIN projects p ON p.id = s.project_id
 WHERE s.id = $1
"""

WORKTREE_COLUMNS = (
    "w.session_id, w.project_id, w.path, w.branch, w.base_commit, w.status, w.node_id, p.repo_path, p.remote_url, "
    "p.default_branch"
)

# ensure's fast path: one statement, no git. Its row lock orders it after a reaper or a
# reject that holds the row, and it only succeeds for an active worktree on this node ($2).
TOUCH_WORKTREE = f"""
UPDATE session_worktrees w SET last_used_at = now()
  FROM projects p
 WHERE w.session_id = $1 AND w.status = 'active' AND p.id = w.project_id AND w.node_id IS NOT DISTINCT FROM $2
RETURNING {WORKTREE_COLUMNS}
"""

WORKTREE = f"""
SELECT {WORKTREE_COLUMNS}
  FROM session_worktrees w JOIN projects p ON p.id = w.project_id
 WHERE w.session_id = $1
"""

LOCK_WORKTREE = WORKTREE + " FOR UPDATE OF w"

UPSERT_WORKTREE = """
INSERT INTO session_worktrees (session_id, project_id, path, branch, base_commit, node_id)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (session_id) DO UPDATE
   SET path = EXCLUDED.path, branch = EXCLUDED.branch, base_commit = EXCLUDED.base_commit,
       node_id = EXCLUDED.node_id, status = 'active', last_used_at = now()
"""

SET_BASE = "UPDATE session_worktrees SET base_commit = $2, last_used_at = now() WHERE session_id = $1"

RUNNING_TASK = "SELECT id FROM tasks WHERE session_id = $1 AND state = 'running' LIMIT 1"

# A change is open while it is pending or its last accept conflicted; a new diff supersedes both.
OPEN_STATUSES = ("pending", "conflict")

CHANGE_COLUMNS = """id, session_id, task_id, agent, base_commit, snapshot_commit, files::text AS files,
       truncated, status, created_at, resolved_at, resolved_by, error,
       supersedes, conflicts::text AS conflicts, accepted_commit, accepted_branch"""

OPEN_CHANGES = f"""
SELECT {CHANGE_COLUMNS} FROM pending_changes
 WHERE session_id = $1 AND status IN ('pending', 'conflict')
 ORDER BY id
   FOR UPDATE
"""

SUPERSEDE_OPEN = f"""
UPDATE pending_changes SET status = 'superseded', resolved_at = now()
 WHERE session_id = $1 AND status IN ('pending', 'conflict')
RETURNING {CHANGE_COLUMNS}
"""

# $9: the change it replaces; $10..$12: a rebase that left conflicts inserts it as 'conflict'.
INSERT_CHANGE = f"""
INSERT INTO pending_changes (session_id, task_id, agent, base_commit, snapshot_commit, diff, files, truncated,
                             supersedes, status, conflicts, error, resolved_at)
VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8, $9, $10, $11::text::jsonb, $12,
        CASE WHEN $10 = 'conflict' THEN now() END)
RETURNING {CHANGE_COLUMNS}
"""

CHANGE = f"SELECT {CHANGE_COLUMNS} FROM pending_changes WHERE id = $1"

LOCK_CHANGE = CHANGE + " FOR UPDATE"

CHANGE_DIFF = "SELECT diff FROM pending_changes WHERE id = $1"

# Accepted/rejected rows keep only what was accepted/rejected ($4..$6 NULL: keep as is; the
# snapshot stays what was reviewed); an accept as a commit records it ($7, $8).
RESOLVE_CHANGE = f"""
UPDATE pending_changes
   SET status = $2, resolved_at = now(), resolved_by = $3, error = NULL,
       diff = coalesce($4, diff), files = coalesce($5::text::jsonb, files), truncated = coalesce($6, truncated),
       accepted_commit = $7, accepted_branch = $8
 WHERE id = $1
RETURNING {CHANGE_COLUMNS}
"""

# A conflicting accept of some files narrows the row to them ($4..$7 NULL: the whole change).
MARK_CONFLICT = f"""
UPDATE pending_changes
   SET status = 'conflict', resolved_at = now(), resolved_by = $2, error = $3,
       diff = coalesce($4, diff), files = coalesce($5::text::jsonb, files), truncated = coalesce($6, truncated),
       snapshot_commit = coalesce($7, snapshot_commit)
 WHERE id = $1
RETURNING {CHANGE_COLUMNS}
"""

# An open change of the session moved onto a new base after another one was accepted.
REHOME_CHANGE = f"""
UPDATE pending_changes
   SET base_commit = $2, snapshot_commit = $3, diff = $4, files = $5::text::jsonb, truncated = $6
 WHERE id = $1
RETURNING {CHANGE_COLUMNS}
"""

LIST_CHANGES = f"""
SELECT {CHANGE_COLUMNS},
       (SELECT count(*) FROM review_comments r WHERE r.change_id = pending_changes.id) AS comments
  FROM pending_changes
 WHERE ($1::bigint IS NULL OR session_id = $1)
   AND ($2::text IS NULL OR status = $2)
 ORDER BY id DESC
 LIMIT $3
"""

TASK_INPUT = "SELECT input FROM tasks WHERE id = $1"

# Reapable: idle, or archived and unused for a short grace ($2: a turn that just started has
# touched last_used_at), with no open change and no task running or queued (a queued task may
# wait for its not_before). Re-checked on the row itself.
REAPABLE = """
      w.status = 'active'
  AND (greatest(w.last_used_at, s.last_active_at) < now() - make_interval(secs => $1)
       OR (s.status = 'archived' AND w.last_used_at < now() - make_interval(secs => $2)))
  AND NOT EXISTS (SELECT 1 FROM pending_changes c
                   WHERE c.session_id = w.session_id AND c.status IN ('pending', 'conflict'))
  AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.session_id = w.session_id AND t.state IN ('running', 'pending'))
"""

# Each node reaps only the worktrees on its own disk ($3).
REAP_CANDIDATES = f"""
SELECT w.session_id, w.project_id
  FROM session_worktrees w JOIN sessions s ON s.id = w.session_id
 WHERE {REAPABLE} AND w.node_id IS NOT DISTINCT FROM $3
 ORDER BY w.session_id
"""

CLAIM_REAP = f"""
UPDATE session_worktrees w SET status = 'removed'
  FROM sessions s, projects p
 WHERE w.session_id = $3 AND s.id = w.session_id AND p.id = w.project_id AND {REAPABLE}
RETURNING {WORKTREE_COLUMNS}
"""

# ---------------------------------------------------------------- review comments

COMMENT_COLUMNS = """id, change_id, session_id, written_on, carried_from, path, side, line, current_line,
       outdated, body, author, state, task_id, created_at"""

INSERT_COMMENT = f"""
INSERT INTO review_comments (change_id, session_id, written_on, path, side, line, current_line, body, author)
VALUES ($1, $2, $1, $3, $4, $5, $5, $6, $7)
RETURNING {COMMENT_COLUMNS}
"""

CHANGE_COMMENTS = f"SELECT {COMMENT_COLUMNS} FROM review_comments WHERE change_id = $1 ORDER BY id"

OPEN_COMMENTS = f"""
SELECT {COMMENT_COLUMNS} FROM review_comments WHERE change_id = $1 AND state = 'open' ORDER BY id FOR UPDATE
"""

MARK_SENT = "UPDATE review_comments SET state = 'sent', task_id = $2 WHERE id = ANY($1::bigint[])"

# A comment carried onto the change that replaces its own: where it was written stays, where
# it is now is computed by worktrees.comments.
CARRY_COMMENT = """
INSERT INTO review_comments (change_id, session_id, written_on, carried_from, path, side, line, current_line,
                             outdated, body, author, state, task_id, created_at)
SELECT $2, session_id, written_on, id, path, side, line, $3, outdated OR $4, body, author, state, task_id, created_at
  FROM review_comments WHERE id = $1
"""

# Projects that started a session within $1 seconds: the ones spare worktrees are kept for.
RECENT_PROJECTS = """
SELECT p.id AS project_id, p.repo_path
  FROM projects p
 WHERE EXISTS (SELECT 1 FROM sessions s
                WHERE s.project_id = p.id AND s.created_at > now() - make_interval(secs => $1))
"""
