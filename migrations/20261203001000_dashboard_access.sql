-- Staff access to the dashboard (issue 10, item 8): users who log in with a password, and their
-- sessions. The REST API keeps its own bearer tokens (`api_tokens`); a session never
-- authenticates the API, and a token never opens the dashboard.
create table users (
    id            bigint generated always as identity primary key,
    -- the login name, as typed at `fleetwatch user create --name`; shown in the page header and
    -- written into audit trails as `user:<name>`. No control characters (a name is printed in
    -- terminals and logs, where those could rewrite what an operator sees).
    name          text not null
        check (length(name) between 1 and 100 and name !~ '[\x01-\x1f\x7f-\x9f]'),
    -- viewer: reads every page; operator: also acts (acknowledge, silence, retire, ...)
    role          text not null check (role in ('viewer', 'operator')),
    -- Argon2id PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`): the salt and the cost
    -- travel with the hash, so the cost can be raised later without a migration
    password_hash text not null check (password_hash like '$argon2id$%'),
    created_at    timestamptz not null default now(),
    -- set by `fleetwatch user disable`: the user can no longer log in and their sessions are
    -- deleted in the same transaction. Users are disabled, never deleted, so trails still name them.
    disabled_at   timestamptz,
    -- the last successful login, for `user list` (spotting accounts nobody uses)
    last_login_at timestamptz
);
-- names are unique regardless of case: `Alice` and `alice` would be one person to a reader of
-- the audit trail, and login looks the name up case-insensitively
create unique index users_name_ci on users (lower(name));

-- A session is what the `fleetwatch_session` cookie stands for. Like API tokens, only the
-- SHA-256 of the 256-bit random cookie value is stored (a leaked backup holds no working
-- session), and a lookup by that digest is an index probe that reveals nothing about the secret.
create table sessions (
    token_hash    bytea primary key check (length(token_hash) = 32),
    -- deleted with the user (a user row is never deleted, but the reference must not dangle)
    user_id       bigint not null references users (id) on delete cascade,
    -- login time: the absolute expiry (`dashboard.session_max`) counts from here
    created_at    timestamptz not null,
    -- the last request seen, written at most once a minute; the idle expiry
    -- (`dashboard.session_idle`) counts from here
    last_seen_at  timestamptz not null,
    -- the earlier of created_at + session_max and last_seen_at + session_idle, as of the last
    -- write: what the retention task deletes by (the request path re-checks with the current
    -- configuration, so shortening the settings takes effect at once)
    expires_at    timestamptz not null
);
-- disabling a user deletes all of their sessions
create index sessions_user on sessions (user_id);
-- the retention task deletes expired sessions
create index sessions_expires on sessions (expires_at);
