//! `lift`: a command-line tool for Liftbridge clusters, on `liftbridge-client`.
//!
//! Streams (`lift stream`), publishing (`lift pub`), reading (`lift sub`), cursors, consumer
//! groups, the brokers and their health (`lift cluster`), benchmarks (`lift bench`), named
//! contexts and shell completions. `lift --help` and `lift <command> --help` show examples.
//! Every command that prints data takes `--json` (one object per line). Errors are one line on
//! stderr with a non-zero exit code (see [`output::code`]).

mod admin;
mod bench;
mod cli;
mod context;
mod output;
mod pubsub;
mod stream;

use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Cmd};
use crate::output::{Failure, Out};

async fn run(cli: Cli) -> Result<(), Failure> {
    let out = Out { json: cli.json };
    match cli.cmd {
        Cmd::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "lift", &mut script);
            // A closed pipe (`| head`) is not an error worth a message.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            Ok(())
        }
        Cmd::Context(cmd) => admin::context(&cli.conn, cmd, out),
        cmd => {
            let c = context::connect(&cli.conn).await?;
            let r = match cmd {
                Cmd::Stream(cmd) => stream::run(&c, cmd, out).await,
                Cmd::Pub(a) => pubsub::publish(&c, a, out).await,
                Cmd::Sub(a) => pubsub::subscribe(&c, a, out).await,
                Cmd::Cursor(cmd) => admin::cursor(&c, cmd, out).await,
                Cmd::Group(cmd) => admin::group(&c, cmd, out).await,
                Cmd::Cluster(cmd) => admin::cluster(&c, cmd, out).await,
                Cmd::Bench(a) => bench::run(&c, a, out).await,
                Cmd::Completions { .. } | Cmd::Context(_) => unreachable!("handled above"),
            };
            c.close();
            r
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lift: cannot start: {e}");
            std::process::exit(output::code::ERROR);
        }
    };
    let result = rt.block_on(run(cli));
    // Background tasks (subscriptions, sessions) must not hold the exit.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    if let Err(f) = result {
        eprintln!("lift: {}", f.message);
        std::process::exit(f.code);
    }
}
