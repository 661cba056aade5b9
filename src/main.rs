//! The `fleetwatch` binary: a thin command line over the library.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use fleetwatch::{app, clock::SystemClock, config::Config, db, logging};

#[derive(Parser)]
#[command(
    name = "fleetwatch",
    version,
    about = "Fleet-operations monitoring for AWS IoT Core device fleets"
)]
struct Cli {
    /// TOML configuration file (also `FLEETWATCH_CONFIG`).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Create the database if needed and apply migrations, then exit.
    Migrate,
    /// Manage API tokens: create (printed once), list, revoke.
    Token {
        #[command(subcommand)]
        command: fleetwatch::tokens::TokenCommand,
    },
    /// Manage dashboard users: create (password from the terminal or stdin), list, disable.
    User {
        #[command(subcommand)]
        command: fleetwatch::users::UserCommand,
    },
    /// Publish a simulated fleet (presence events and impressions, with incidents) to a broker.
    Simulate(fleetwatch::sim::run::SimulateArgs),
    /// Everything in one process: a broker, the service, a simulated fleet playing every kind
    /// of incident, a webhook receiver. Prints the dashboard URL, a login and an API token.
    Demo(fleetwatch::demo::DemoArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The subscriber writes to stdout, which `token` and `user` commands keep for their result alone (a
    // script captures the new token from it), and `simulate` for its summary; their errors
    // still reach stderr below.
    if !matches!(
        cli.command,
        Some(Command::Token { .. } | Command::User { .. } | Command::Simulate(_))
    ) {
        // `demo` keeps stdout for its first lines too: its logs go to stderr.
        if matches!(cli.command, Some(Command::Demo(_))) {
            logging::init_stderr();
        } else {
            logging::init();
        }
    }
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("fleetwatch: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // The simulator needs no service configuration (and no database).
    if let Some(Command::Simulate(args)) = cli.command {
        return fleetwatch::sim::run::run(args, Arc::new(SystemClock), &mut std::io::stdout())
            .await;
    }
    // The demo makes its own configuration (`demo::config_toml`).
    if let Some(Command::Demo(args)) = cli.command {
        return fleetwatch::demo::run(
            args,
            Arc::new(SystemClock),
            &mut std::io::stdout(),
            app::shutdown_signal(),
        )
        .await;
    }
    let cfg = Config::load(cli.config.as_deref())?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = app::App::build(cfg, Arc::new(SystemClock)).await?;
            app.run_until(app::shutdown_signal()).await
        }
        Command::Migrate => {
            let pool = db::connect(cfg.database.url.expose(), 2).await?;
            db::migrate(&pool).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Token { command } => {
            fleetwatch::tokens::run_cli(
                &cfg,
                command,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            )
            .await
        }
        Command::Simulate(_) | Command::Demo(_) => unreachable!("handled above"),
        Command::User { command } => {
            fleetwatch::users::run_cli(
                &cfg,
                command,
                &mut std::io::stdin().lock(),
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            )
            .await
        }
    }
}
