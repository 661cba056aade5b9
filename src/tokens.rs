//! Stored API tokens: their scopes, their shape, and what is done with their rows in
//! `api_tokens` (create, list, revoke, find by hash, record use; the queries are `db::tokens`),
//! plus the `fleetwatch token …` commands over them.
//!
//! A token is `fw_` followed by 32 random bytes in base64url (no padding). It is printed once,
//! at creation, and only its SHA-256 is stored. 256 random bits need no salt or slow hash:
//! there is nothing to guess, and a plain digest lets the API find the token by an index
//! lookup on every request (see the migration for why that lookup leaks nothing useful).

use std::fmt;
use std::io::Write;
use std::str::FromStr;

use anyhow::{bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::config::{Config, Secret};
use crate::db;
pub use crate::db::tokens::TokenRow;

/// What a token may do. Ordered: `admin` implies `write`, `write` implies `read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Write, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("expected read, write or admin, got {s:?}"))
    }
}

/// Whether a token holding `held` may do what `needed` stands for.
pub fn grants(held: &[Scope], needed: Scope) -> bool {
    held.iter().any(|s| *s >= needed)
}

/// `read,write` → the scopes, sorted and without duplicates; at least one.
pub fn parse_scopes(s: &str) -> Result<Vec<Scope>, String> {
    let mut scopes = s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::parse)
        .collect::<Result<Vec<Scope>, _>>()?;
    scopes.sort();
    scopes.dedup();
    if scopes.is_empty() {
        return Err("expected at least one of read, write, admin (comma-separated)".into());
    }
    Ok(scopes)
}

pub const MAX_NAME_CHARS: usize = 100;

/// A token's name, trimmed: non-empty, at most 100 characters, no control characters (a name
/// is printed in terminals and logs, where those could rewrite what an operator sees).
pub fn validate_name(name: &str) -> Result<String, String> {
    let name = name.trim();
    if name.is_empty() {
        return Err("expected a non-empty name".into());
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!("expected at most {MAX_NAME_CHARS} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err("control characters are not allowed".into());
    }
    Ok(name.to_string())
}

/// What every token starts with, so a secret scanner (and a human) can recognise one.
pub const TOKEN_PREFIX: &str = "fw_";
const SECRET_BYTES: usize = 32;
/// base64url without padding of 32 bytes.
const SECRET_CHARS: usize = 43;
/// How much of a token listings show: the `fw_` and 6 characters (36 of its 256 bits).
pub const SHOWN_CHARS: usize = TOKEN_PREFIX.len() + 6;

/// A new random token. `rand`'s thread generator is a CSPRNG seeded from the OS.
pub fn generate() -> Secret {
    let bytes: [u8; SECRET_BYTES] = rand::random();
    Secret::new(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// Whether `s` has the shape of a token we issue. Anything else cannot be stored, so the API
/// refuses it without a database round trip. The shape is public; this leaks nothing.
pub fn looks_like_token(s: &str) -> bool {
    s.strip_prefix(TOKEN_PREFIX).is_some_and(|rest| {
        rest.len() == SECRET_CHARS
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// SHA-256 of a token: what is stored, and what the API looks tokens up by.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A token just created: the only time the token itself exists outside its holder.
#[derive(Debug)]
pub struct NewToken {
    pub id: i64,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub prefix: String,
    pub token: Secret,
}

/// An unrevoked token found by its hash.
#[derive(Debug, Clone)]
pub struct ActiveToken {
    pub id: i64,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// Create a token named `name` with `scopes`; the returned token is shown once and then lost.
pub async fn create(
    pool: &PgPool,
    name: &str,
    scopes: &[Scope],
    now: DateTime<Utc>,
) -> anyhow::Result<NewToken> {
    let name = validate_name(name).map_err(|e| anyhow::anyhow!("name: {e}"))?;
    let mut scopes = scopes.to_vec();
    scopes.sort();
    scopes.dedup();
    if scopes.is_empty() {
        bail!("scopes: expected at least one of read, write, admin");
    }
    let token = generate();
    let prefix: String = token.expose()[..SHOWN_CHARS].to_string();
    let names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let id = db::tokens::insert(pool, &name, &names, &hash(token.expose()), &prefix, now)
        .await
        .context("storing the new token")?;
    Ok(NewToken {
        id,
        name,
        scopes,
        prefix,
        token,
    })
}

/// Every token, revoked ones included, oldest first.
pub async fn list(pool: &PgPool) -> sqlx::Result<Vec<TokenRow>> {
    db::tokens::list(pool).await
}

/// What `revoke` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// Revoked now.
    Now {
        name: String,
    },
    /// It already was, at that time (revoking is idempotent; the first time is kept).
    Already {
        name: String,
        at: DateTime<Utc>,
    },
    NotFound,
}

/// Revoke token `id`: it is refused from the next request on.
pub async fn revoke(pool: &PgPool, id: i64, now: DateTime<Utc>) -> sqlx::Result<Revoked> {
    let name = db::tokens::revoke(pool, id, now).await?;
    if let Some(name) = name {
        return Ok(Revoked::Now { name });
    }
    let row = db::tokens::revoked_at(pool, id).await?;
    Ok(match row {
        Some((name, Some(at))) => Revoked::Already { name, at },
        // Unrevoked after a failed conditional update: un-revoking does not exist, so this is
        // only a row that appeared in between; call it not found rather than guess.
        Some((_, None)) | None => Revoked::NotFound,
    })
}

/// The unrevoked token whose SHA-256 is `digest`, if any.
pub async fn find_active(pool: &PgPool, digest: &[u8; 32]) -> sqlx::Result<Option<ActiveToken>> {
    let row = db::tokens::find_active(pool, digest).await?;
    Ok(row.map(|r| ActiveToken {
        id: r.id,
        name: r.name,
        // The table's check admits only known scopes; an unknown one would grant nothing.
        scopes: r.scopes.iter().filter_map(|s| s.parse().ok()).collect(),
        last_used_at: r.last_used_at,
    }))
}

/// `last_used_at` is written at most this often per token, so reads stay reads.
pub const TOUCH_EVERY: TimeDelta = TimeDelta::minutes(1);

/// Whether a token last used at `last` should have `last_used_at` rewritten at `now`.
pub fn needs_touch(last: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    last.is_none_or(|l| now - l >= TOUCH_EVERY)
}

/// Record that token `id` was used at `now`. Conditional, so that concurrent requests (and
/// replicas) write the row once a minute between them, not once each.
pub async fn touch(pool: &PgPool, id: i64, now: DateTime<Utc>) -> sqlx::Result<bool> {
    db::tokens::touch(pool, id, now, TOUCH_EVERY).await
}

// ---------------------------------------------------------------------------------------------
// The command line

/// `fleetwatch token …`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (only it, on stdout) once; it cannot be shown again.
    Create {
        /// Who or what holds it, e.g. "ticketing-bot" (at most 100 characters).
        #[arg(long)]
        name: String,
        /// Comma-separated: read, write, admin (admin implies write, write implies read).
        #[arg(long)]
        scopes: String,
    },
    /// List tokens (never the tokens themselves: they are not stored).
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id; it is refused from the next request on.
    Revoke {
        /// The id shown by `token list`.
        id: i64,
    },
}

/// Run a `token` command against the configured database (created and migrated first, like
/// `migrate`). Results go to `out`, notes for the operator to `err`.
pub async fn run_cli(
    cfg: &Config,
    cmd: TokenCommand,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<()> {
    // Validate before touching the database, so a typo costs nothing and creates nothing.
    let create_args = match &cmd {
        TokenCommand::Create { name, scopes } => Some((
            validate_name(name).map_err(|e| anyhow::anyhow!("--name: {e}"))?,
            parse_scopes(scopes).map_err(|e| anyhow::anyhow!("--scopes: {e}"))?,
        )),
        _ => None,
    };
    let pool = crate::db::connect(cfg.database.url.expose(), 2).await?;
    crate::db::migrate(&pool).await?;
    let now = Utc::now();
    match cmd {
        TokenCommand::Create { .. } => {
            let (name, scopes) = create_args.expect("validated above");
            let t = create(&pool, &name, &scopes, now).await?;
            writeln!(out, "{}", t.token.expose())?;
            out.flush()?;
            writeln!(
                err,
                "created token {} ({:?}, scopes {}); it is shown only this once, store it now",
                t.id,
                t.name,
                join(&t.scopes)
            )?;
        }
        TokenCommand::List { json } => {
            let rows = list(&pool).await.context("listing tokens")?;
            if json {
                serde_json::to_writer_pretty(&mut *out, &rows)?;
                writeln!(out)?;
            } else {
                write_table(out, &rows)?;
            }
        }
        TokenCommand::Revoke { id } => match revoke(&pool, id, now).await? {
            Revoked::Now { name } => writeln!(out, "revoked token {id} ({name:?})")?,
            Revoked::Already { name, at } => writeln!(
                out,
                "token {id} ({name:?}) was already revoked at {}",
                ts(at)
            )?,
            Revoked::NotFound => bail!("no token {id} (see `fleetwatch token list`)"),
        },
    }
    pool.close().await;
    Ok(())
}

fn join(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// A time in the command-line tables: RFC 3339 UTC to the second.
pub(crate) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// An optional time in the command-line tables, `-` when absent.
pub(crate) fn ts_or_dash(t: Option<DateTime<Utc>>) -> String {
    t.map(ts).unwrap_or_else(|| "-".into())
}

fn write_table(out: &mut dyn Write, rows: &[TokenRow]) -> std::io::Result<()> {
    let header = [
        "ID",
        "NAME",
        "SCOPES",
        "PREFIX",
        "CREATED",
        "LAST USED",
        "REVOKED",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.id.to_string(),
                r.name.clone(),
                r.scopes.join(","),
                r.prefix.clone(),
                ts(r.created_at),
                ts_or_dash(r.last_used_at),
                ts_or_dash(r.revoked_at),
            ]
        })
        .collect();
    write_columns(out, header, &cells)
}

/// Print `header` and `cells` as left-aligned columns two spaces apart (the `token list` and
/// `user list` tables).
pub(crate) fn write_columns<const N: usize>(
    out: &mut dyn Write,
    header: [&str; N],
    cells: &[[String; N]],
) -> std::io::Result<()> {
    let mut widths = header.map(|h| h.chars().count());
    for row in cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut dyn Write, row: &[&str]| -> std::io::Result<()> {
        let mut s = String::new();
        for (c, w) in row.iter().zip(widths) {
            s.push_str(c);
            s.extend(std::iter::repeat_n(' ', w - c.chars().count() + 2));
        }
        writeln!(out, "{}", s.trim_end())
    };
    line(out, &header)?;
    for row in cells {
        line(out, &row.each_ref().map(String::as_str))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_sorted_and_deduplicated() {
        assert_eq!(
            parse_scopes("write, read,write").unwrap(),
            [Scope::Read, Scope::Write]
        );
        assert_eq!(parse_scopes("admin").unwrap(), [Scope::Admin]);
        for bad in ["", " , ", "root", "read,Write", "read;write", "read,,x"] {
            assert!(parse_scopes(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn admin_implies_write_implies_read() {
        use Scope::*;
        let cases = [
            (&[Read][..], [true, false, false]),
            (&[Write][..], [true, true, false]),
            (&[Admin][..], [true, true, true]),
            (&[Read, Write][..], [true, true, false]),
            (&[][..], [false, false, false]),
        ];
        for (held, want) in cases {
            for (needed, w) in Scope::ALL.into_iter().zip(want) {
                assert_eq!(grants(held, needed), w, "{held:?} needs {needed}");
            }
        }
    }

    #[test]
    fn names_are_validated() {
        assert_eq!(validate_name("  ci bot ").unwrap(), "ci bot");
        assert_eq!(validate_name("チケット").unwrap(), "チケット");
        assert!(validate_name(&"x".repeat(100)).is_ok());
        assert!(validate_name(&"é".repeat(100)).is_ok());
        for bad in [
            String::new(),
            "   ".into(),
            "x".repeat(101),
            "a\u{7}b".into(),
            "a\u{1b}[2Jb".into(),
            "a\u{85}b".into(),
            "a\nb".into(),
            "a\0b".into(),
        ] {
            assert!(validate_name(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tokens_have_the_documented_shape() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        for t in [&a, &b] {
            let t = t.expose();
            assert!(t.starts_with("fw_"), "{t}");
            assert_eq!(t.len(), 46, "{t}");
            assert!(looks_like_token(t), "{t}");
            let raw = URL_SAFE_NO_PAD.decode(&t[3..]).unwrap();
            assert_eq!(raw.len(), 32);
        }
        for bad in [
            "",
            "fw_",
            "tok",
            &format!("fw_{}", "A".repeat(42)),
            &format!("fw_{}", "A".repeat(44)),
            &format!("fw_{}=", "A".repeat(42)),
            &format!("fw_{}+", "A".repeat(42)),
            &format!("fw_{}é", "A".repeat(41)),
            &format!("FW_{}", "A".repeat(43)),
        ] {
            assert!(!looks_like_token(bad), "{bad:?}");
        }
    }

    #[test]
    fn last_used_is_rewritten_once_a_minute() {
        let t0 = DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z")
            .unwrap()
            .to_utc();
        assert!(needs_touch(None, t0));
        assert!(!needs_touch(Some(t0), t0));
        assert!(!needs_touch(Some(t0), t0 + TimeDelta::seconds(59)));
        assert!(needs_touch(Some(t0), t0 + TimeDelta::seconds(60)));
        // a clock that went backwards does not write
        assert!(!needs_touch(Some(t0), t0 - TimeDelta::seconds(600)));
    }
}
