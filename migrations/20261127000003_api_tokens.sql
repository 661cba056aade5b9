-- Stored API tokens for the REST API (issue 4, item 7), created with `fleetwatch token create`.
--
-- A token is shown once, when it is created, and only its SHA-256 is kept: a leaked backup or a
-- read-only SQL session must not hand out working credentials. Tokens carry 256 random bits,
-- so a plain (unsalted, fast) hash is enough: there is nothing to brute-force, and a fast hash
-- lets the API find a token by an index lookup on every request. Looking up by the hash is also
-- what keeps authentication constant-time with respect to the secret: the B-tree compares
-- digests, and knowing how many leading bytes of a digest matched tells nothing about the token.
--
-- Tokens are revoked, never deleted, so an audit can still name the token that did something.
create table api_tokens (
    id           bigint generated always as identity primary key,
    -- who or what holds the token ("ticketing-bot"), shown in listings and used as the actor;
    -- no control characters (C0, DEL, C1), which could rewrite a terminal showing the listing
    name         text not null
        check (length(name) between 1 and 100 and name !~ '[\x01-\x1f\x7f-\x9f]'),
    -- admin implies write, write implies read; the service checks that order, the table only
    -- keeps out scopes the service would not understand
    scopes       text[] not null
        check (cardinality(scopes) >= 1 and scopes <@ array['read', 'write', 'admin']::text[]),
    -- SHA-256 of the whole token; unique, and the index the API looks tokens up by
    token_hash   bytea not null unique check (length(token_hash) = 32),
    -- the token's first characters ("fw_" and a few more), so an operator can tell which token
    -- a listing row is without the listing ever showing a usable secret
    prefix       text not null,
    created_at   timestamptz not null default now(),
    -- written at most once a minute per token, so that reads do not turn into a write each
    last_used_at timestamptz,
    -- a revoked token is refused from the next request on (the API keeps no token cache)
    revoked_at   timestamptz
);
