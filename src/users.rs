//! Dashboard staff: users (name, role, Argon2id password) and their sessions, plus the
//! `fleetwatch user …` commands. The queries are `db::users`; the HTTP side (cookie, login
//! form, extractors) is `http::web`.
//!
//! Contract:
//! - A name follows the token rules (`tokens::validate_name`) and is unique case-insensitively.
//! - A password has at least [`MIN_PASSWORD_CHARS`] characters; it is only ever read from the
//!   terminal (no echo) or one line of stdin, never from an argument (which `ps` and shell
//!   history would show). Hashing and verifying are CPU-bound (tens of milliseconds) and run
//!   in `spawn_blocking`.
//! - A session is a random 256-bit token (the API token generator, [`tokens::generate`]) of
//!   which only the SHA-256 is stored. It ends at logout, when its user is disabled, after
//!   `dashboard.session_idle` without a request, and `dashboard.session_max` after login,
//!   whichever comes first ([`session_state`]). Each login issues a fresh one (rotation).

use std::io::{BufRead, IsTerminal, Read, Write};
use std::str::FromStr;

use anyhow::{bail, Context};
use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgPool;

use crate::config::{Config, DashboardConfig, Secret};
use crate::db;
pub use crate::db::users::{Disabled, UserRow};
use crate::tokens;
pub use crate::tokens::MAX_NAME_CHARS;

/// What a user may do: viewers read every page, operators also act.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Viewer,
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            _ => Err(format!("expected viewer or operator, got {s:?}")),
        }
    }
}

/// Shorter passwords are refused: 12 characters is the floor current guidance (NIST 800-63B
/// asks 8 at least, 15 for single-factor) allows for a staff-only screen behind a rate limit.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longer ones are refused too: Argon2 hashes any length, but a megabyte "password" posted to
/// the login form is a denial of service, not a password.
pub const MAX_PASSWORD_CHARS: usize = 1024;

/// Whether `p` may be a password.
pub fn validate_password(p: &str) -> Result<(), String> {
    let n = p.chars().count();
    if n < MIN_PASSWORD_CHARS {
        return Err(format!(
            "the password is too short ({n} characters); use at least {MIN_PASSWORD_CHARS}"
        ));
    }
    if n > MAX_PASSWORD_CHARS {
        return Err(format!(
            "the password is too long; use at most {MAX_PASSWORD_CHARS} characters"
        ));
    }
    Ok(())
}

/// Argon2id hash (PHC string, random salt) of `password`, off the async threads.
pub async fn hash_password(password: Secret) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || password_auth::generate_hash(password.expose()))
        .await
        .context("hashing the password")
}

/// Whether `password` matches `hash`, off the async threads. A malformed hash matches nothing.
pub async fn verify_password(password: Secret, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        password_auth::verify_password(password.expose(), &hash).is_ok()
    })
    .await
    .unwrap_or(false)
}

/// A hash of a password nobody knows, computed once: login verifies against it when the user
/// does not exist, so an unknown name costs the same time as a wrong password.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let random: [u8; 32] = rand::random();
        password_auth::generate_hash(hex::encode(random))
    })
}

/// The name and the password checked, the password hashed; name errors start with `key`.
async fn checked(name: &str, password: Secret, key: &str) -> anyhow::Result<(String, String)> {
    let name = tokens::validate_name(name).map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
    validate_password(password.expose()).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((name, hash_password(password).await?))
}

/// Create user `name` with `role` and `password`. Errors say what was wrong (name taken, …).
pub async fn create(
    pool: &PgPool,
    name: &str,
    role: Role,
    password: Secret,
    now: DateTime<Utc>,
) -> anyhow::Result<i64> {
    let (name, hash) = checked(name, password, "--name").await?;
    match db::users::insert(pool, &name, role.as_str(), &hash, now)
        .await
        .context("storing the new user")?
    {
        Some(id) => Ok(id),
        None => bail!("a user named {name:?} already exists (names are compared ignoring case)"),
    }
}

/// Create user `name` with `role` and `password`, or give the existing one (enabled again)
/// this role and password: `fleetwatch demo` prints a fresh login at every start.
pub async fn set(
    pool: &PgPool,
    name: &str,
    role: Role,
    password: Secret,
    now: DateTime<Utc>,
) -> anyhow::Result<i64> {
    let (name, hash) = checked(name, password, "name").await?;
    db::users::upsert(pool, &name, role.as_str(), &hash, now)
        .await
        .context("storing the user")
}

// ---------------------------------------------------------------------------------------------
// Sessions

/// Where a session stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Valid; `touch` says whether `last_seen_at` is old enough to be rewritten.
    Live { touch: bool },
    /// Over `session_idle` since the last request.
    Idle,
    /// Over `session_max` since login.
    Expired,
}

/// `last_seen_at` is rewritten at most this often, so a page with fragments does not write
/// once per request. Idle expiry is therefore exact to within this.
pub const TOUCH_EVERY: TimeDelta = TimeDelta::minutes(1);

/// The pure rule: a session created at `created` and last seen at `last_seen` at `now`.
/// A clock that went backwards (a `last_seen` in the future) keeps the session live but does
/// not write.
pub fn session_state(
    cfg: &DashboardConfig,
    created: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    now: DateTime<Utc>,
) -> SessionState {
    if now - created >= cfg.session_max.delta() {
        return SessionState::Expired;
    }
    if now - last_seen >= cfg.session_idle.delta() {
        return SessionState::Idle;
    }
    SessionState::Live {
        touch: now - last_seen >= TOUCH_EVERY,
    }
}

/// When a session created at `created` and last seen at `last_seen` expires (what the
/// retention task deletes by).
pub fn expires_at(
    cfg: &DashboardConfig,
    created: DateTime<Utc>,
    last_seen: DateTime<Utc>,
) -> DateTime<Utc> {
    let max = created
        .checked_add_signed(cfg.session_max.delta())
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let idle = last_seen
        .checked_add_signed(cfg.session_idle.delta())
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    max.min(idle)
}

/// Who a live session belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionUser {
    pub id: i64,
    pub name: String,
    pub role: Role,
}

/// Start a session for `user_id` at `now`, deleting `replaces` (rotation). Returns the cookie
/// value, which exists nowhere else.
pub async fn start_session(
    pool: &PgPool,
    cfg: &DashboardConfig,
    user_id: i64,
    replaces: Option<&str>,
    now: DateTime<Utc>,
) -> sqlx::Result<Secret> {
    let token = tokens::generate();
    let old = replaces.map(tokens::hash);
    db::users::start_session(
        pool,
        user_id,
        &tokens::hash(token.expose()),
        old.as_ref(),
        now,
        expires_at(cfg, now, now),
    )
    .await?;
    Ok(token)
}

/// The user of session cookie `token` at `now`, if the session is live (an expired one is
/// deleted on the way).
pub async fn session_user(
    pool: &PgPool,
    cfg: &DashboardConfig,
    token: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<Option<SessionUser>> {
    if !tokens::looks_like_token(token) {
        return Ok(None);
    }
    let digest = tokens::hash(token);
    let Some(row) = db::users::find_session(pool, &digest).await? else {
        return Ok(None);
    };
    // The table's check admits only the two roles; anything else would grant nothing.
    let Ok(role) = row.role.parse::<Role>() else {
        return Ok(None);
    };
    match session_state(cfg, row.created_at, row.last_seen_at, now) {
        SessionState::Live { touch } => {
            if touch {
                let exp = expires_at(cfg, row.created_at, now);
                if let Err(e) = db::users::touch_session(pool, &digest, now, TOUCH_EVERY, exp).await
                {
                    // Bookkeeping: failing to record the request must not refuse it.
                    tracing::warn!(error = %e, "recording a session's last request failed");
                }
            }
            Ok(Some(SessionUser {
                id: row.user_id,
                name: row.name,
                role,
            }))
        }
        SessionState::Idle | SessionState::Expired => {
            db::users::delete_session(pool, &digest).await?;
            Ok(None)
        }
    }
}

/// End session `token` (logout). Unknown tokens are ignored: logging out twice is fine.
pub async fn end_session(pool: &PgPool, token: &str) -> sqlx::Result<()> {
    if tokens::looks_like_token(token) {
        db::users::delete_session(pool, &tokens::hash(token)).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The command line

/// `fleetwatch user …`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum UserCommand {
    /// Create a dashboard user. The password is read from the terminal (not echoed), or as
    /// one line from stdin when stdin is not a terminal; never from an argument.
    Create {
        /// The login name, shown in the page header and audit trails (at most 100 characters).
        #[arg(long)]
        name: String,
        /// viewer (reads every page) or operator (also acts: acknowledge, silence, retire).
        #[arg(long)]
        role: String,
    },
    /// List users (never their passwords: only a hash is stored).
    List,
    /// Disable a user: they cannot log in any more and their sessions end at once.
    Disable {
        #[arg(long)]
        name: String,
    },
}

/// Read the password for `user create`: from the terminal without echo, twice, or one line
/// of `input` when stdin is not a terminal.
fn read_password(input: &mut dyn BufRead, err: &mut dyn Write) -> anyhow::Result<Secret> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("password: ").context("reading the password")?;
        validate_password(&first).map_err(|e| anyhow::anyhow!("{e}"))?;
        let again = rpassword::prompt_password("again: ").context("reading the password")?;
        if first != again {
            bail!("the passwords differ; nothing was created");
        }
        return Ok(Secret::new(first));
    }
    writeln!(err, "reading the password from stdin (one line)")?;
    let mut line = String::new();
    (&mut *input)
        .take(4 * MAX_PASSWORD_CHARS as u64 + 2)
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let line = line
        .strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(&line);
    if line.is_empty() {
        bail!("no password on stdin (give one line, at least {MIN_PASSWORD_CHARS} characters)");
    }
    Ok(Secret::new(line))
}

/// Run a `user` command against the configured database (created and migrated first, like
/// `migrate`). `input` is stdin; results go to `out`, notes to `err`.
pub async fn run_cli(
    cfg: &Config,
    cmd: UserCommand,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<()> {
    // Validate before touching the database, so a typo costs nothing and creates nothing.
    let create_args = match &cmd {
        UserCommand::Create { name, role } => {
            let name = tokens::validate_name(name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
            let role: Role = role.parse().map_err(|e| anyhow::anyhow!("--role: {e}"))?;
            let password = read_password(input, err)?;
            validate_password(password.expose()).map_err(|e| anyhow::anyhow!("{e}"))?;
            Some((name, role, password))
        }
        _ => None,
    };
    let pool = crate::db::connect(cfg.database.url.expose(), 2).await?;
    crate::db::migrate(&pool).await?;
    let now = Utc::now();
    match cmd {
        UserCommand::Create { .. } => {
            let (name, role, password) = create_args.expect("validated above");
            let id = create(&pool, &name, role, password, now).await?;
            writeln!(out, "created user {id} ({name:?}, {})", role.as_str())?;
        }
        UserCommand::List => write_table(out, &db::users::list(&pool).await?)?,
        UserCommand::Disable { name } => match db::users::disable(&pool, &name, now).await? {
            Disabled::Now { name, sessions } => {
                writeln!(out, "disabled user {name:?}; {sessions} session(s) ended")?
            }
            Disabled::Already { name, at } => writeln!(
                out,
                "user {name:?} was already disabled at {}",
                tokens::ts(at)
            )?,
            Disabled::NotFound => bail!("no user named {name:?} (see `fleetwatch user list`)"),
        },
    }
    pool.close().await;
    Ok(())
}

fn write_table(out: &mut dyn Write, rows: &[UserRow]) -> std::io::Result<()> {
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.role.clone(),
                tokens::ts(r.created_at),
                tokens::ts_or_dash(r.last_login_at),
                tokens::ts_or_dash(r.disabled_at),
            ]
        })
        .collect();
    tokens::write_columns(
        out,
        ["NAME", "ROLE", "CREATED", "LAST LOGIN", "DISABLED"],
        &cells,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn sessions_expire_idle_or_old_whichever_first() {
        let cfg = DashboardConfig {
            session_idle: "12h".parse::<HumanDuration>().unwrap(),
            session_max: "7d".parse::<HumanDuration>().unwrap(),
            ..DashboardConfig::default()
        };
        let t0 = t("2026-11-27T12:00:00Z");
        let h = TimeDelta::hours;
        use SessionState::*;
        assert_eq!(session_state(&cfg, t0, t0, t0), Live { touch: false });
        assert_eq!(
            session_state(&cfg, t0, t0, t0 + TimeDelta::seconds(59)),
            Live { touch: false }
        );
        assert_eq!(session_state(&cfg, t0, t0, t0 + h(1)), Live { touch: true });
        assert_eq!(
            session_state(&cfg, t0, t0, t0 + h(12) - TimeDelta::seconds(1)),
            Live { touch: true }
        );
        assert_eq!(session_state(&cfg, t0, t0, t0 + h(12)), Idle);
        // active all week: still ends at 7 days
        assert_eq!(
            session_state(&cfg, t0, t0 + h(167), t0 + h(167) + TimeDelta::minutes(30)),
            Live { touch: true }
        );
        assert_eq!(session_state(&cfg, t0, t0 + h(167), t0 + h(168)), Expired);
        // clock went backwards: live, no write
        assert_eq!(
            session_state(&cfg, t0, t0, t0 - h(1)),
            Live { touch: false }
        );
        assert_eq!(expires_at(&cfg, t0, t0), t0 + h(12));
        assert_eq!(expires_at(&cfg, t0, t0 + h(160)), t0 + h(168));
    }

    #[test]
    fn passwords_have_a_floor_and_a_ceiling() {
        assert!(validate_password("").is_err());
        assert!(validate_password("elevenchars").is_err());
        assert!(validate_password("twelve chars").is_ok());
        assert!(validate_password(&"é".repeat(12)).is_ok());
        assert!(validate_password(&"x".repeat(1024)).is_ok());
        assert!(validate_password(&"x".repeat(1025)).is_err());
    }

    #[test]
    fn roles_parse_exactly() {
        assert_eq!("viewer".parse::<Role>().unwrap(), Role::Viewer);
        assert_eq!("operator".parse::<Role>().unwrap(), Role::Operator);
        for bad in ["", "admin", "Operator", " viewer"] {
            assert!(bad.parse::<Role>().is_err(), "{bad:?}");
        }
    }
}
