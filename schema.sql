-- Switchyard schema. Idempotent: applying it twice changes nothing.
-- Versioned: `schema_version` records each step. A later change is appended as a new
-- idempotent block (ALTER ... IF NOT EXISTS) with a new version number, never by editing
-- a released block, so an existing database upgrades without losing rows.
-- `switchyard migrate` (and every start) runs this whole file in one transaction under an
-- advisory lock, so concurrent starts do not race.

CREATE TABLE IF NOT EXISTS schema_version (
    version     integer PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------- version 1

CREATE TABLE IF NOT EXISTS projects (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL UNIQUE CHECK (name <> ''),
    repo_path       text NOT NULL UNIQUE CHECK (repo_path LIKE '/%'),
    default_branch  text NOT NULL DEFAULT 'main',
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS sessions (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id      bigint NOT NULL REFERENCES projects(id),
    title           text NOT NULL DEFAULT '',
    agent           text,
    model           text,
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'archived')),
    -- Highest session_events.seq handed out; bumped in the same statement that inserts
    -- events, so its row lock orders concurrent writers and seq stays gap-free.
    last_seq        bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_active_at  timestamptz NOT NULL DEFAULT now(),
    archived_at     timestamptz,
    CHECK ((status = 'archived') = (archived_at IS NOT NULL))
);
CREATE INDEX IF NOT EXISTS sessions_project_idx ON sessions (project_id);

-- The queue and the public submission API. project_id and session_id deliberately carry no
-- foreign keys: a bad reference is accepted and then failed by the dispatcher with a clear
-- failure_reason, so a submitter sees why in the row itself.
CREATE TABLE IF NOT EXISTS tasks (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id           bigint,
    session_id           bigint,
    input                text NOT NULL DEFAULT '',
    agent                text,
    model                text,
    mode_id              text,
    priority             integer NOT NULL DEFAULT 0,
    state                text NOT NULL DEFAULT 'pending'
                         CHECK (state IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    execution_path       text CHECK (execution_path IN ('noop', 'native', 'acp', 'pty', 'opencode_server')),
    attempt              integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts         integer NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    not_before           timestamptz,
    expires_at           timestamptz,
    dispatch_key         text UNIQUE,
    parent_task_id       bigint,
    claimed_by           text,
    claim_token          uuid,
    lease_expires_at     timestamptz,
    cancel_requested_at  timestamptz,
    created_at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at           timestamptz,
    ended_at             timestamptz,
    output_summary       text,
    cost_tokens          bigint,
    failure_reason       text,
    error                text,
    CHECK (state <> 'running' OR (claim_token IS NOT NULL AND lease_expires_at IS NOT NULL)),
    CHECK ((state IN ('completed', 'failed', 'cancelled')) = (ended_at IS NOT NULL))
);
-- Invariant 1: at most one running task per session.
CREATE UNIQUE INDEX IF NOT EXISTS tasks_one_running_per_session
    ON tasks (session_id) WHERE state = 'running';
-- The claim scans pending tasks by priority, then age; per-session FIFO uses the second index.
CREATE INDEX IF NOT EXISTS tasks_pending_claim_idx
    ON tasks (priority DESC, created_at, id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS tasks_pending_session_idx
    ON tasks (session_id, created_at, id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS tasks_running_lease_idx
    ON tasks (lease_expires_at) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS tasks_session_idx ON tasks (session_id, id);

CREATE TABLE IF NOT EXISTS task_attempts (
    task_id         bigint NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    attempt         integer NOT NULL,
    worker_id       text NOT NULL,
    claim_token     uuid NOT NULL,
    started_at      timestamptz NOT NULL,
    ended_at        timestamptz,
    outcome         text CHECK (outcome IN ('completed', 'failed', 'cancelled', 'retry', 'interrupted')),
    failure_reason  text,
    error           text,
    PRIMARY KEY (task_id, attempt)
);

CREATE TABLE IF NOT EXISTS messages (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id         bigint NOT NULL REFERENCES sessions(id),
    task_id            bigint REFERENCES tasks(id) ON DELETE SET NULL,
    role               text NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    content            text NOT NULL DEFAULT '',
    reasoning          text NOT NULL DEFAULT '',
    status             text NOT NULL DEFAULT 'complete'
                       CHECK (status IN ('streaming', 'complete', 'failed', 'cancelled')),
    stop_reason        text,
    prompt_tokens      integer,
    completion_tokens  integer,
    created_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at        timestamptz
);
CREATE INDEX IF NOT EXISTS messages_session_idx ON messages (session_id, id);

-- Tool calls of an assistant message, upserted by tool call id as snapshots arrive.
CREATE TABLE IF NOT EXISTS message_parts (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id    bigint NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    session_id    bigint NOT NULL REFERENCES sessions(id),
    tool_call_id  text NOT NULL,
    name          text NOT NULL DEFAULT '',
    kind          text,
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'in_progress', 'completed', 'failed')),
    input         jsonb,
    output        jsonb,
    locations     jsonb,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (message_id, tool_call_id)
);

-- The durable log of every frame of a session; the WebSocket gateway replays from it.
CREATE TABLE IF NOT EXISTS session_events (
    session_id  bigint NOT NULL REFERENCES sessions(id),
    seq         bigint NOT NULL CHECK (seq > 0),
    type        text NOT NULL CHECK (type <> ''),
    payload     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (session_id, seq)
);

CREATE TABLE IF NOT EXISTS available_agents (
    name        text PRIMARY KEY,
    transport   text NOT NULL CHECK (transport IN ('acp', 'pty', 'opencode_server')),
    command     text[] NOT NULL,
    version     text,
    available   boolean NOT NULL DEFAULT false,
    detail      text,
    checked_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS agent_sessions (
    session_id           bigint NOT NULL REFERENCES sessions(id),
    agent                text NOT NULL,
    upstream_session_id  text NOT NULL,
    config_hash          text NOT NULL,
    server_key           text,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, agent)
);

CREATE TABLE IF NOT EXISTS session_worktrees (
    session_id    bigint PRIMARY KEY REFERENCES sessions(id),
    project_id    bigint NOT NULL REFERENCES projects(id),
    path          text NOT NULL UNIQUE,
    branch        text NOT NULL,
    base_commit   text NOT NULL CHECK (base_commit ~ '^[0-9a-f]{40}$'),
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'removed')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS pending_changes (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id   bigint NOT NULL REFERENCES sessions(id),
    task_id      bigint REFERENCES tasks(id) ON DELETE SET NULL,
    agent        text,
    base_commit  text NOT NULL,
    diff         text NOT NULL,
    files        jsonb NOT NULL DEFAULT '[]'::jsonb,
    truncated    boolean NOT NULL DEFAULT false,
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'superseded', 'accepted', 'rejected', 'conflict')),
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    resolved_at  timestamptz,
    resolved_by  text,
    error        text
);
-- Invariant 4: at most one pending change per session.
CREATE UNIQUE INDEX IF NOT EXISTS pending_changes_one_pending_per_session
    ON pending_changes (session_id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS pending_changes_session_idx ON pending_changes (session_id, id);
CREATE TABLE IF NOT EXISTS api_tokens (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL,
    token_hash  text NOT NULL UNIQUE CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    -- NULL: every project (the operator's token); otherwise only these projects.
    project_ids bigint[],
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- Notifications. NOTIFY is delivered on commit, so a listener never sees an uncommitted row.
CREATE OR REPLACE FUNCTION switchyard_notify_task() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state = 'pending'
       AND (TG_OP = 'INSERT' OR OLD.state IS DISTINCT FROM 'pending') THEN
        PERFORM pg_notify('tasks_new', NEW.id::text);
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.cancel_requested_at IS NOT NULL
       AND OLD.cancel_requested_at IS NULL THEN
        PERFORM pg_notify('task_cancel', NEW.id::text);
    END IF;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER tasks_notify
    AFTER INSERT OR UPDATE OF state, cancel_requested_at ON tasks
    FOR EACH ROW EXECUTE FUNCTION switchyard_notify_task();

CREATE OR REPLACE FUNCTION switchyard_notify_session_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('session_events', NEW.session_id::text || ':' || NEW.seq::text);
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER session_events_notify
    AFTER INSERT ON session_events
    FOR EACH ROW EXECUTE FUNCTION switchyard_notify_session_event();

INSERT INTO schema_version (version) VALUES (1) ON CONFLICT DO NOTHING;

-- ---------------------------------------------------------------- version 2

-- The commit (parent: base_commit) holding the worktree's content when the change was diffed.
-- Accept and reject regenerate the exact patch from it, so they act on what was reviewed even
-- if `diff` was truncated or a later turn is editing the worktree.
ALTER TABLE pending_changes ADD COLUMN IF NOT EXISTS snapshot_commit text
    CHECK (snapshot_commit ~ '^[0-9a-f]{40}$');

INSERT INTO schema_version (version) VALUES (2) ON CONFLICT DO NOTHING;

-- ---------------------------------------------------------------- version 3

-- dispatch_key is unique per project, not across all of them: the same key in another project
-- is another task, and a submitter limited to one project can neither learn nor take another
-- project's keys. Submitters write ON CONFLICT (project_id, dispatch_key) DO NOTHING.
ALTER TABLE tasks DROP CONSTRAINT IF EXISTS tasks_dispatch_key_key;
CREATE UNIQUE INDEX IF NOT EXISTS tasks_project_dispatch_key ON tasks (project_id, dispatch_key);

-- The deterministic key of a (sub-)agent dispatch, so a repeated dispatch is idempotent by
-- construction: hex sha256 of agent, NUL, dag_task_id, NUL, hex sha256 of prompt, NUL,
-- parent_session_id in decimal (UTF-8; a NULL counts as empty). For example
-- INSERT INTO tasks (project_id, input, agent, dispatch_key)
-- VALUES (1, 'fix it', 'opencode', switchyard_dispatch_key('opencode', 'step-3', 'fix it', 42))
-- ON CONFLICT (project_id, dispatch_key) DO NOTHING;
CREATE OR REPLACE FUNCTION switchyard_dispatch_key(
    agent text, dag_task_id text, prompt text, parent_session_id bigint
) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT encode(sha256(
        convert_to(coalesce(agent, ''), 'UTF8') || '\x00'::bytea
        || convert_to(coalesce(dag_task_id, ''), 'UTF8') || '\x00'::bytea
        || convert_to(encode(sha256(convert_to(coalesce(prompt, ''), 'UTF8')), 'hex'), 'UTF8') || '\x00'::bytea
        || convert_to(coalesce(parent_session_id::text, ''), 'UTF8')
    ), 'hex')
$$;

INSERT INTO schema_version (version) VALUES (3) ON CONFLICT DO NOTHING;

-- ---------------------------------------------------------------- version 4

-- The project feed (WebSocket `subscribe_project`): a session created or renamed/archived, one
-- of its tasks queued or changing state, one of its changes opened or resolved. The payload
-- only names the session, '<project_id>:<session_id>:created|updated'; the gateway reads the
-- session's current summary, so a lost or repeated notification never shows a stale state.
CREATE OR REPLACE FUNCTION switchyard_notify_project_feed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    project bigint;
BEGIN
    IF TG_TABLE_NAME = 'sessions' THEN
        PERFORM pg_notify('project_feed', NEW.project_id::text || ':' || NEW.id::text || ':'
                          || CASE WHEN TG_OP = 'INSERT' THEN 'created' ELSE 'updated' END);
        RETURN NULL;
    END IF;
    SELECT s.project_id INTO project FROM sessions s WHERE s.id = NEW.session_id;
    IF project IS NOT NULL THEN
        PERFORM pg_notify('project_feed', project::text || ':' || NEW.session_id::text || ':updated');
    END IF;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER sessions_project_feed_insert
    AFTER INSERT ON sessions
    FOR EACH ROW EXECUTE FUNCTION switchyard_notify_project_feed();
CREATE OR REPLACE TRIGGER sessions_project_feed_update
    AFTER UPDATE OF title, status ON sessions
    FOR EACH ROW WHEN (OLD.title IS DISTINCT FROM NEW.title OR OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION switchyard_notify_project_feed();
CREATE OR REPLACE TRIGGER tasks_project_feed_insert
    AFTER INSERT ON tasks
    FOR EACH ROW WHEN (NEW.session_id IS NOT NULL)
    EXECUTE FUNCTION switchyard_notify_project_feed();
CREATE OR REPLACE TRIGGER tasks_project_feed_update
    AFTER UPDATE OF state, session_id ON tasks
    FOR EACH ROW WHEN (NEW.session_id IS NOT NULL
                       AND (OLD.state IS DISTINCT FROM NEW.state OR OLD.session_id IS DISTINCT FROM NEW.session_id))
    EXECUTE FUNCTION switchyard_notify_project_feed();
CREATE OR REPLACE TRIGGER pending_changes_project_feed_insert
    AFTER INSERT ON pending_changes
    FOR EACH ROW EXECUTE FUNCTION switchyard_notify_project_feed();
CREATE OR REPLACE TRIGGER pending_changes_project_feed_update
    AFTER UPDATE OF status ON pending_changes
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION switchyard_notify_project_feed();

-- No index on sessions.last_active_at for list_sessions: every stored frame updates it, and an
-- index would make those updates non-HOT; a project's sessions are found by sessions_project_idx.

INSERT INTO schema_version (version) VALUES (4) ON CONFLICT DO NOTHING;

-- ---------------------------------------------------------------- version 5

-- Per-task agent options (an ACP session config option such as {"effort": "high"}), checked
-- against what the agent advertised; and a fresh context: the turn gets no upstream session and
-- no history, and later turns continue from it.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS agent_options jsonb NOT NULL DEFAULT '{}'::jsonb
    CHECK (jsonb_typeof(agent_options) = 'object');
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS fresh_context boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS tasks_fresh_context_idx ON tasks (session_id, id) WHERE fresh_context;

-- The catalogue: what an agent offers. opencode agents list their configured models; an ACP
-- agent's models, modes and session config options are what its last session/new advertised.
ALTER TABLE available_agents ADD COLUMN IF NOT EXISTS models jsonb NOT NULL DEFAULT '[]'::jsonb;
ALTER TABLE available_agents ADD COLUMN IF NOT EXISTS modes jsonb NOT NULL DEFAULT '[]'::jsonb;
ALTER TABLE available_agents ADD COLUMN IF NOT EXISTS config_options jsonb NOT NULL DEFAULT '[]'::jsonb;
ALTER TABLE available_agents ADD COLUMN IF NOT EXISTS advertised_at timestamptz;

-- Approvals by a person: a turn waiting for an answer to a permission (or an opencode question).
-- The first reply wins (state leaves 'pending' once); the turn, in whichever dispatcher, learns
-- the answer from the NOTIFY on permission_replies.
CREATE TABLE IF NOT EXISTS permission_requests (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id       bigint NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    -- The attempt that asked: a request outlives neither its attempt nor its claim.
    claim_token   uuid NOT NULL,
    session_id    bigint NOT NULL REFERENCES sessions(id),
    project_id    bigint NOT NULL REFERENCES projects(id),
    -- The assistant message of the turn that asked (its frames carry it too).
    message_id    bigint REFERENCES messages(id) ON DELETE SET NULL,
    kind          text NOT NULL DEFAULT 'permission' CHECK (kind IN ('permission', 'question')),
    tool_call_id  text,
    -- The agent's name for the permission (bash, edit, ...) and its ACP tool kind.
    permission    text NOT NULL DEFAULT '',
    tool_kind     text NOT NULL DEFAULT 'other',
    title         text NOT NULL DEFAULT '',
    command       text,
    paths         text[] NOT NULL DEFAULT '{}',
    -- Patterns an "allow always" covers (opencode's `always`), else derived from the command.
    patterns      text[] NOT NULL DEFAULT '{}',
    -- [{option_id, kind, name}] for a permission; the questions for a question.
    options       jsonb NOT NULL DEFAULT '[]'::jsonb,
    questions     jsonb,
    state         text NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'allowed', 'denied', 'answered', 'expired', 'withdrawn')),
    option_id     text,
    answers       jsonb,
    remember      text CHECK (remember IN ('once', 'session')),
    decided_by    text,
    decided_at    timestamptz,
    reason        text,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at    timestamptz NOT NULL,
    CHECK ((state = 'pending') = (decided_at IS NULL))
);
CREATE INDEX IF NOT EXISTS permission_requests_pending_idx
    ON permission_requests (task_id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS permission_requests_session_idx ON permission_requests (session_id, id);

-- "Allow always": later requests of the session matching a grant are allowed without asking.
CREATE TABLE IF NOT EXISTS permission_grants (
    session_id  bigint NOT NULL REFERENCES sessions(id),
    tool_kind   text NOT NULL,
    pattern     text NOT NULL,
    request_id  bigint REFERENCES permission_requests(id) ON DELETE SET NULL,
    granted_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (session_id, tool_kind, pattern)
);

-- The payload is the decision itself when it is small (a permission's), so the waiting turn needs
-- no further read; else (a question's answers, long values) just the request id.
CREATE OR REPLACE FUNCTION switchyard_notify_permission_reply() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    decision text := json_build_object('id', NEW.id, 'state', NEW.state, 'option_id', NEW.option_id,
                                       'remember', NEW.remember, 'decided_by', NEW.decided_by,
                                       'reason', NEW.reason)::text;
BEGIN
    PERFORM pg_notify('permission_replies',
                      CASE WHEN NEW.kind = 'permission' AND octet_length(decision) < 4000 THEN decision
                           ELSE NEW.id::text END);
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER permission_requests_notify
    AFTER UPDATE OF state ON permission_requests
    FOR EACH ROW WHEN (OLD.state = 'pending' AND NEW.state <> 'pending')
    EXECUTE FUNCTION switchyard_notify_permission_reply();

INSERT INTO schema_version (version) VALUES (5) ON CONFLICT DO NOTHING;

-- ---------------------------------------------------------------- version 6

-- The review loop. A change remembers the change it replaced (a new turn's diff, the rest of a
-- partial review, a rebase), so "what changed since I looked" is one diff of their snapshots
-- and comments follow the chain. `conflicts`: paths a rebase left with conflict markers in the
-- worktree (the change cannot be accepted until a turn resolves them). An accept as a commit
-- or onto a branch records the commit it made and the branch it went on.
--
-- Applied once: ALTER TABLE takes an exclusive lock even when the column exists, and a process
-- starting beside running dispatchers must not queue behind (or deadlock with) their writes.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM schema_version WHERE version = 6) THEN
        RETURN;
    END IF;
    ALTER TABLE pending_changes ADD COLUMN IF NOT EXISTS supersedes bigint REFERENCES pending_changes(id);
    ALTER TABLE pending_changes ADD COLUMN IF NOT EXISTS conflicts jsonb;
    ALTER TABLE pending_changes ADD COLUMN IF NOT EXISTS accepted_commit text
        CHECK (accepted_commit ~ '^[0-9a-f]{40}$');
    ALTER TABLE pending_changes ADD COLUMN IF NOT EXISTS accepted_branch text;

    -- The change whose review comments (request_changes) or rebase conflicts
    -- (resolve_with_agent) a task answers; like the other references of tasks, no foreign key.
    ALTER TABLE tasks ADD COLUMN IF NOT EXISTS review_change_id bigint;

    -- A reviewer's comment on a change: on a line of a file (the new side: the change's
    -- content; the old side: its base) or, without path and line, on the change as a whole.
    -- When a new change replaces this one, the comment is carried over as a row of the new
    -- change (`carried_from`), at the line it has moved to (`current_line`; NULL once the line
    -- is gone), `outdated` once its line moved or vanished. `open` comments are what
    -- request_changes sends; then they are `sent`, with the task they went into.
    CREATE TABLE IF NOT EXISTS review_comments (
        id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        change_id     bigint NOT NULL REFERENCES pending_changes(id),
        session_id    bigint NOT NULL REFERENCES sessions(id),
        written_on    bigint NOT NULL REFERENCES pending_changes(id),
        carried_from  bigint REFERENCES review_comments(id),
        path          text CHECK (path <> ''),
        side          text CHECK (side IN ('new', 'old')),
        line          integer CHECK (line >= 1),
        current_line  integer CHECK (current_line >= 1),
        outdated      boolean NOT NULL DEFAULT false,
        body          text NOT NULL CHECK (body <> ''),
        author        text NOT NULL,
        state         text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'sent')),
        task_id       bigint,
        created_at    timestamptz NOT NULL DEFAULT now(),
        CHECK ((path IS NULL) = (line IS NULL) AND (path IS NULL) = (side IS NULL)),
        CHECK (current_line IS NULL OR path IS NOT NULL),
        CHECK ((state = 'sent') = (task_id IS NOT NULL))
    );
    CREATE INDEX IF NOT EXISTS review_comments_change_idx ON review_comments (change_id, id);
END;
$$;

INSERT INTO schema_version (version) VALUES (6) ON CONFLICT DO NOTHING;

-- ---------------------------------------------------------------- version 7

-- The processes that run: a dispatcher's stable worker id (tasks.claimed_by), or a gateway.
-- Each live one holds an advisory lock on hashtextextended('switchyard-worker:' || id, 0) on a
-- connection of its own, so two live processes never share an id, and a row whose lock nobody
-- holds belongs to a process that is gone. `process` identifies the OS process
-- ('<boot id>:<pid namespace>:<pid>:<start time>'), so the next holder of the id can tell
-- whether the previous one is gone and recover what it left running at once.
CREATE TABLE IF NOT EXISTS workers (
    id          text PRIMARY KEY CHECK (id <> ''),
    kind        text NOT NULL CHECK (kind IN ('dispatcher', 'gateway')),
    host        text NOT NULL,
    pid         integer NOT NULL,
    process     text NOT NULL,
    -- The dispatcher's /metrics (health_port), the gateway's WebSocket URL.
    url         text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    seen_at     timestamptz NOT NULL DEFAULT now()
);

INSERT INTO schema_version (version) VALUES (7) ON CONFLICT DO NOTHING;

-- ---------------------------------------------------------------- version 8

-- Several machines. A node is one host's share of the work: every dispatcher process belongs to
-- one (`[node] id`, default derived from the host and the data directory) and heartbeats its
-- row with what it can run. It is dead once its heartbeat is older than its own `dead_after`
-- (the node says how long it may stay silent); a drained one claims nothing and gives up its
-- idle sessions.
CREATE TABLE IF NOT EXISTS nodes (
    id                  text PRIMARY KEY CHECK (id <> ''),
    host                text NOT NULL,
    -- The agents (tasks.agent, 'native' for NULL) its dispatchers can run now.
    agents              text[] NOT NULL DEFAULT '{}',
    -- Turns its dispatchers run at once, all together.
    capacity            integer NOT NULL DEFAULT 0 CHECK (capacity >= 0),
    dead_after          double precision NOT NULL CHECK (dead_after > 0),
    started_at          timestamptz NOT NULL DEFAULT now(),
    seen_at             timestamptz NOT NULL DEFAULT now(),
    drain_requested_at  timestamptz
);
ALTER TABLE workers ADD COLUMN IF NOT EXISTS node_id text;

-- Live: heard from within its dead_after and not drained (a drained node's sessions may move).
CREATE OR REPLACE FUNCTION switchyard_node_holds(node text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT n.drain_requested_at IS NULL
                            AND n.seen_at >= now() - make_interval(secs => n.dead_after)
                       FROM nodes n WHERE n.id = node), false)
$$;

-- Session affinity: the node whose disk holds the worktree (NULL: any node, one shared disk).
ALTER TABLE session_worktrees ADD COLUMN IF NOT EXISTS node_id text;

-- A project reached through a git remote (each node keeps its own clone), instead of or as well
-- as a local checkout (repo_path; `apply` accepts need it).
ALTER TABLE projects ADD COLUMN IF NOT EXISTS remote_url text CHECK (remote_url <> '');
ALTER TABLE projects ALTER COLUMN repo_path DROP NOT NULL;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'projects_repo_or_remote') THEN
        ALTER TABLE projects ADD CONSTRAINT projects_repo_or_remote
            CHECK (repo_path IS NOT NULL OR remote_url IS NOT NULL);
    END IF;
END;
$$;

-- Why a pending task is not being claimed (no live node has its agent); NULL once one can.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS waiting_for text;

INSERT INTO schema_version (version) VALUES (8) ON CONFLICT DO NOTHING;

-- ---------------------------------------------------------------- version 9

-- The projects a node cannot reach now (a checkout that is not on its disk, a remote that does not
-- answer it): it leaves their tasks to the nodes that can.
ALTER TABLE nodes ADD COLUMN IF NOT EXISTS unreachable_projects bigint[] NOT NULL DEFAULT '{}';

INSERT INTO schema_version (version) VALUES (9) ON CONFLICT DO NOTHING;
